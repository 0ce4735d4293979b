// Loop-buffer playback processor (the full performer UI replaces this file).
class LoopPlayer extends AudioWorkletProcessor {
  process(inputs, outputs) { return true; }
}
registerProcessor('loop-player', LoopPlayer);
