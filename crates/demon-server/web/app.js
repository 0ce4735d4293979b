// Connects to the session and shows its state (the full performer UI replaces this file).
const status = document.getElementById('status');
const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws${location.search}`);
ws.onmessage = (e) => { if (typeof e.data === 'string') { const m = JSON.parse(e.data); if (m.type === 'ready') status.textContent = `connected: ${m.backend}, ${m.song_seconds.toFixed(1)} s loop`; } };
ws.onclose = () => { status.textContent = 'disconnected'; };
