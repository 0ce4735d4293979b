//! The event bus from the runner to its subscribers (web clients, recorders, MCP), with
//! backpressure that never slows the runner:
//!
//! - audio slices drop the oldest queued slice when a subscriber is full;
//! - parameter echoes and stats coalesce (a newer one replaces the queued one);
//! - control events never drop; a subscriber whose queue is full of them has stopped reading
//!   and is disconnected.
//!
//! Publishing takes each subscriber's queue lock for a push and never waits for a reader.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::control::ControlMessage;

/// Fresh audio for a region of the loop (what a client patches into its own buffer).
#[derive(Clone, Debug, Serialize)]
pub struct AudioSlice {
    /// First sample of the region in the song.
    pub start_sample: u64,
    /// Planar audio; `channels[c].len()` samples per channel.
    #[serde(skip)]
    pub channels: Arc<Vec<Vec<f32>>>,
    pub tick: u64,
    pub tick_ms: f32,
    pub decode_ms: f32,
    /// Generations finished so far.
    pub generations: u64,
}

/// Everything the runner tells the world.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Audio(AudioSlice),
    /// Knob values after a tick that changed them (coalesced).
    Params {
        tick: u64,
        effective: std::collections::BTreeMap<String, f64>,
        target: std::collections::BTreeMap<String, f64>,
    },
    /// Tick statistics (coalesced).
    Stats {
        tick: u64,
        tick_ms: f32,
        decode_ms: f32,
        gen_per_s: f32,
        active_slots: usize,
        queue: usize,
        lead_ms: f32,
    },
    /// A control message was applied at `tick`; `origin` is the sender's client id.
    Applied {
        tick: u64,
        origin: u64,
        message: ControlMessage,
    },
    /// The whole loop buffer was replaced (new source, first generation): clients re-fetch it.
    BufferReplaced {
        tick: u64,
        samples: u64,
        version: u64,
    },
    /// Something the performer should know once (no sound card, no MIDI, ...).
    Notice {
        message: String,
    },
}

impl Event {
    fn policy(&self) -> Policy {
        match self {
            Event::Audio(_) => Policy::DropOldest,
            Event::Params { .. } | Event::Stats { .. } => Policy::Coalesce,
            _ => Policy::NeverDrop,
        }
    }
    fn same_kind(&self, other: &Event) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    DropOldest,
    Coalesce,
    NeverDrop,
}

struct SubShared {
    id: u64,
    queue: Mutex<VecDeque<Event>>,
    ready: Condvar,
    closed: AtomicBool,
    dropped: AtomicU64,
}

/// Why a subscriber stopped receiving.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error(
        "disconnected: the subscriber stopped reading and its queue filled with control events"
    )]
    Disconnected,
}

/// One consumer of events.
pub struct Subscriber {
    shared: Arc<SubShared>,
}

impl Subscriber {
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Audio slices dropped so far because this subscriber fell behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Wait up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Event>, RecvError> {
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = q.pop_front() {
            return Ok(Some(e));
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(RecvError::Disconnected);
        }
        let (mut q, _) = self
            .shared
            .ready
            .wait_timeout(q, timeout)
            .unwrap_or_else(|e| e.into_inner());
        match q.pop_front() {
            Some(e) => Ok(Some(e)),
            None if self.shared.closed.load(Ordering::Acquire) => Err(RecvError::Disconnected),
            None => Ok(None),
        }
    }

    pub fn try_recv(&self) -> Result<Option<Event>, RecvError> {
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        match q.pop_front() {
            Some(e) => Ok(Some(e)),
            None if self.shared.closed.load(Ordering::Acquire) => Err(RecvError::Disconnected),
            None => Ok(None),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

/// Fan-out of runner events to bounded per-subscriber queues.
pub struct EventBus {
    subs: Mutex<Vec<Arc<SubShared>>>,
    capacity: usize,
    next_id: AtomicU64,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        Self {
            subs: Mutex::new(Vec::new()),
            capacity: capacity.max(2),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn subscribe(&self) -> Subscriber {
        let shared = Arc::new(SubShared {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        self.subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(shared.clone());
        Subscriber { shared }
    }

    /// Close every subscriber (the session ended): readers drain what is queued, then get
    /// `Disconnected`.
    pub fn close(&self) {
        let subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        for s in subs.iter() {
            s.closed.store(true, Ordering::Release);
            s.ready.notify_all();
        }
    }

    pub fn subscribers(&self) -> usize {
        self.subs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Deliver `event` to every subscriber according to its policy.
    pub fn publish(&self, event: Event) {
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| !s.closed.load(Ordering::Acquire));
        for s in subs.iter() {
            let mut q = s.queue.lock().unwrap_or_else(|e| e.into_inner());
            let policy = event.policy();
            if policy == Policy::Coalesce
                && let Some(slot) = q.iter_mut().rev().find(|e| e.same_kind(&event))
            {
                *slot = event.clone();
                continue;
            }
            if q.len() >= self.capacity {
                // Make room: drop the oldest audio slice, then the oldest coalescable event.
                let victim = q
                    .iter()
                    .position(|e| e.policy() == Policy::DropOldest)
                    .or_else(|| q.iter().position(|e| e.policy() == Policy::Coalesce));
                match victim {
                    Some(i) => {
                        q.remove(i);
                        s.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    None if policy == Policy::NeverDrop => {
                        // Only control events are queued and another must not be lost: the reader
                        // is gone. Disconnect rather than block the runner.
                        s.closed.store(true, Ordering::Release);
                        s.ready.notify_all();
                        continue;
                    }
                    None => {
                        s.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            q.push_back(event.clone());
            s.ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio(tick: u64) -> Event {
        Event::Audio(AudioSlice {
            start_sample: tick,
            channels: Arc::new(vec![vec![0.0; 4]; 2]),
            tick,
            tick_ms: 0.0,
            decode_ms: 0.0,
            generations: 0,
        })
    }

    fn applied(tick: u64) -> Event {
        Event::Applied {
            tick,
            origin: 0,
            message: ControlMessage::ClearLoopBand,
        }
    }

    #[test]
    fn policies() {
        let bus = EventBus::new(3);
        let sub = bus.subscribe();
        for t in 0..5 {
            bus.publish(audio(t));
        }
        // Audio: the oldest were dropped.
        let got: Vec<u64> = std::iter::from_fn(|| sub.try_recv().unwrap())
            .map(|e| match e {
                Event::Audio(a) => a.tick,
                _ => 99,
            })
            .collect();
        assert_eq!(got, vec![2, 3, 4]);
        assert_eq!(sub.dropped(), 2);
        // Params coalesce into one queued event.
        for t in 0..4 {
            bus.publish(Event::Params {
                tick: t,
                effective: Default::default(),
                target: Default::default(),
            });
        }
        assert!(matches!(
            sub.try_recv().unwrap(),
            Some(Event::Params { tick: 3, .. })
        ));
        assert!(sub.try_recv().unwrap().is_none());
        // Control events displace audio but are never dropped themselves.
        bus.publish(audio(10));
        bus.publish(audio(11));
        bus.publish(audio(12));
        for t in 0..3 {
            bus.publish(applied(t));
        }
        let kinds: Vec<bool> = std::iter::from_fn(|| sub.try_recv().unwrap())
            .map(|e| matches!(e, Event::Applied { .. }))
            .collect();
        assert_eq!(kinds, vec![true, true, true]);
    }

    #[test]
    fn a_stalled_subscriber_is_disconnected_not_waited_for() {
        let bus = EventBus::new(4);
        let stalled = bus.subscribe();
        let live = bus.subscribe();
        let t0 = std::time::Instant::now();
        for t in 0..100 {
            bus.publish(applied(t));
            assert!(matches!(
                live.try_recv().unwrap(),
                Some(Event::Applied { .. })
            ));
        }
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert!(stalled.is_closed());
        // It still gets what was queued, then learns it was disconnected.
        for _ in 0..4 {
            assert!(stalled.try_recv().unwrap().is_some());
        }
        assert!(matches!(stalled.try_recv(), Err(RecvError::Disconnected)));
        assert_eq!(bus.subscribers(), 1);
    }
}
