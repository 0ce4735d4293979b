//! The event bus from the runner to its subscribers (web clients, recorders, MCP), with
//! backpressure that never slows the runner:
//!
//! - audio slices drop the oldest queued slice when a subscriber is full;
//! - parameter echoes and stats coalesce (a newer one replaces the queued one);
//! - control events never drop; a subscriber whose queue is full of them has stopped reading
//!   and is disconnected.
//!
//! Publishing takes each subscriber's queue lock for a push and never waits for a reader.
//! Readers are threads (`recv_timeout`) or async tasks (`recv`, a future woken by the publisher
//! through a waker kept in the queue), so a server can forward to many clients without a thread
//! each and without this crate depending on an async runtime.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use serde::Serialize;

use crate::control::ControlMessage;
use crate::loopbuf::LoopSnapshot;

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
        /// The real-time budget after this tick (load, overload, the degrade depth cap).
        realtime: crate::budget::RealtimeReport,
        /// Knob-to-ear latency per class, as clients reported it (`crate::latency`).
        knob_to_ear: std::collections::BTreeMap<String, crate::latency::ClassLatency>,
        /// The loudness of what plays and the matcher's gain, which pages apply too.
        loudness: crate::loudness::LoudnessReport,
        /// The idle pause holds generation (`crate::core::SessionConfig::idle_pause_seconds`).
        idle: bool,
    },
    /// The loop slice `[start_sample, start_sample + samples)` decoded in `tick` is the first to
    /// carry the applied controls `controls` (ids): a client reports when it first plays it.
    Reflects {
        tick: u64,
        start_sample: u64,
        samples: u64,
        controls: Vec<u64>,
    },
    /// A control message was applied at `tick`; `origin` is the sender's client id.
    Applied {
        tick: u64,
        origin: u64,
        message: ControlMessage,
    },
    /// The whole loop buffer was replaced (new source, first generation). `audio` is the new
    /// loop as a snapshot (shared, not copied: cloning the event clones a pointer).
    BufferReplaced {
        tick: u64,
        samples: u64,
        version: u64,
        #[serde(skip)]
        audio: LoopSnapshot,
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

/// A subscriber's queue and the task waiting on it (if it reads asynchronously).
struct Queue {
    events: VecDeque<Event>,
    waker: Option<Waker>,
}

struct SubShared {
    id: u64,
    queue: Mutex<Queue>,
    ready: Condvar,
    closed: AtomicBool,
    dropped: AtomicU64,
}

impl SubShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mark closed and wake every reader, blocking or async.
    fn close(&self) {
        let waker = {
            let mut q = self.lock();
            self.closed.store(true, Ordering::Release);
            q.waker.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn pop(&self, q: &mut Queue) -> Result<Option<Event>, RecvError> {
        match q.events.pop_front() {
            Some(e) => Ok(Some(e)),
            None if self.closed.load(Ordering::Acquire) => Err(RecvError::Disconnected),
            None => Ok(None),
        }
    }
}

/// Why a subscriber stopped receiving.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error(
        "disconnected: the session ended, or the subscriber stopped reading and its queue filled with control events"
    )]
    Disconnected,
}

/// One consumer of events. Read it from a thread ([`recv_timeout`](Self::recv_timeout)) or from
/// an async task ([`recv`](Self::recv)); the bus needs no runtime for either.
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
        let mut q = self.shared.lock();
        if let Some(e) = self.shared.pop(&mut q)? {
            return Ok(Some(e));
        }
        let (mut q, _) = self
            .shared
            .ready
            .wait_timeout(q, timeout)
            .unwrap_or_else(|e| e.into_inner());
        self.shared.pop(&mut q)
    }

    pub fn try_recv(&self) -> Result<Option<Event>, RecvError> {
        let mut q = self.shared.lock();
        self.shared.pop(&mut q)
    }

    /// The next event, as a future: it registers its waker in the queue, and the publisher
    /// wakes it after pushing (no thread waits). Dropping the future loses nothing: an event
    /// is only taken from the queue when the future completes.
    pub fn recv(&self) -> Recv<'_> {
        Recv { sub: self }
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

/// The future of [`Subscriber::recv`].
pub struct Recv<'a> {
    sub: &'a Subscriber,
}

impl Future for Recv<'_> {
    type Output = Result<Event, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let shared = &self.sub.shared;
        let mut q = shared.lock();
        match shared.pop(&mut q) {
            Ok(Some(e)) => Poll::Ready(Ok(e)),
            Err(e) => Poll::Ready(Err(e)),
            Ok(None) => {
                // Registered under the queue lock, so a publish cannot slip in between the
                // check above and the registration.
                if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    q.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
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
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                waker: None,
            }),
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
            s.close();
        }
    }

    pub fn subscribers(&self) -> usize {
        self.subs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Deliver `event` to every subscriber according to its policy. Never waits for a reader:
    /// it takes each queue's lock for a push and wakes the reader after releasing it.
    pub fn publish(&self, event: Event) {
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| !s.closed.load(Ordering::Acquire));
        let policy = event.policy();
        for s in subs.iter() {
            let mut q = s.lock();
            if policy == Policy::Coalesce
                && let Some(slot) = q.events.iter_mut().rev().find(|e| e.same_kind(&event))
            {
                *slot = event.clone();
                continue;
            }
            if q.events.len() >= self.capacity {
                // Make room: drop the oldest audio slice, then the oldest coalescable event.
                let victim = q
                    .events
                    .iter()
                    .position(|e| e.policy() == Policy::DropOldest)
                    .or_else(|| q.events.iter().position(|e| e.policy() == Policy::Coalesce));
                match victim {
                    Some(i) => {
                        q.events.remove(i);
                        s.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    None if policy == Policy::NeverDrop => {
                        // Only control events are queued and another must not be lost: the reader
                        // is gone. Disconnect rather than block the runner.
                        drop(q);
                        s.close();
                        continue;
                    }
                    None => {
                        s.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            q.events.push_back(event.clone());
            let waker = q.waker.take();
            drop(q);
            s.ready.notify_one();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// A one-shot reply from the runner to whoever asked, readable from a thread
/// ([`ReplyReceiver::recv_timeout`]) or awaited from a task (`ReplyReceiver` is a future): the
/// runner never waits for the asker, and an async asker holds no thread while it waits.
pub fn reply_channel<T>() -> (ReplySender<T>, ReplyReceiver<T>) {
    let shared = Arc::new(ReplyShared {
        slot: Mutex::new(ReplySlot {
            value: None,
            sender_gone: false,
            waker: None,
        }),
        ready: Condvar::new(),
    });
    (
        ReplySender {
            shared: Some(shared.clone()),
        },
        ReplyReceiver { shared },
    )
}

struct ReplySlot<T> {
    value: Option<T>,
    sender_gone: bool,
    waker: Option<Waker>,
}

struct ReplyShared<T> {
    slot: Mutex<ReplySlot<T>>,
    ready: Condvar,
}

impl<T> ReplyShared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReplySlot<T>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, value: Option<T>) {
        let waker = {
            let mut s = self.lock();
            if value.is_some() {
                s.value = value;
            }
            s.sender_gone = true;
            s.waker.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The runner's end of [`reply_channel`]. Dropping it unanswered tells the asker.
pub struct ReplySender<T> {
    shared: Option<Arc<ReplyShared<T>>>,
}

impl<T> ReplySender<T> {
    /// Answer (never blocks; an asker that gave up simply never reads it).
    pub fn send(mut self, value: T) {
        if let Some(s) = self.shared.take() {
            s.finish(Some(value));
        }
    }
}

impl<T> Drop for ReplySender<T> {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            s.finish(None);
        }
    }
}

/// Why no reply came.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("no answer in time")]
    Timeout,
    #[error("the runner dropped the request without answering (it has stopped)")]
    Dropped,
}

/// The asker's end of [`reply_channel`].
pub struct ReplyReceiver<T> {
    shared: Arc<ReplyShared<T>>,
}

impl<T> ReplyReceiver<T> {
    /// Block this thread until the answer comes, at most `timeout`.
    pub fn recv_timeout(self, timeout: Duration) -> Result<T, ReplyError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut s = self.shared.lock();
        loop {
            if let Some(v) = s.value.take() {
                return Ok(v);
            }
            if s.sender_gone {
                return Err(ReplyError::Dropped);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(ReplyError::Timeout);
            }
            s = self
                .shared
                .ready
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl<T> Future for ReplyReceiver<T> {
    type Output = Result<T, ReplyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.shared.lock();
        if let Some(v) = s.value.take() {
            return Poll::Ready(Ok(v));
        }
        if s.sender_gone {
            return Poll::Ready(Err(ReplyError::Dropped));
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        Poll::Pending
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
        // Every publish returns at once (this thread is the only one: a publish that waited for
        // the stalled reader would never return), and the live reader gets every event.
        for t in 0..100 {
            bus.publish(applied(t));
            assert!(matches!(
                live.try_recv().unwrap(),
                Some(Event::Applied { tick, .. }) if tick == t
            ));
        }
        assert!(stalled.is_closed());
        // It still gets what was queued, then learns it was disconnected.
        for t in 0..4 {
            assert!(matches!(
                stalled.try_recv().unwrap(),
                Some(Event::Applied { tick, .. }) if tick == t
            ));
        }
        assert!(matches!(stalled.try_recv(), Err(RecvError::Disconnected)));
        assert_eq!(bus.subscribers(), 1);
    }

    /// A minimal executor: polls `f` on this thread, parking between wake-ups, and counts the
    /// wake-ups (so a test can tell a woken task from a spinning one).
    fn block_on<F: Future>(f: F) -> (F::Output, usize) {
        use std::sync::atomic::AtomicUsize;
        use std::task::Wake;
        struct Unpark(std::thread::Thread, AtomicUsize);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.1.fetch_add(1, Ordering::SeqCst);
                self.0.unpark();
            }
        }
        let unpark = Arc::new(Unpark(std::thread::current(), AtomicUsize::new(0)));
        let waker = Waker::from(unpark.clone());
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return (v, unpark.1.load(Ordering::SeqCst));
            }
            std::thread::park();
        }
    }

    #[test]
    fn an_async_reader_is_woken_by_publish_and_by_close() {
        let bus = Arc::new(EventBus::new(8));
        let sub = bus.subscribe();
        // Queued already: ready on the first poll, no wake-up needed.
        bus.publish(applied(1));
        let (e, wakes) = block_on(sub.recv());
        assert!(matches!(e, Ok(Event::Applied { tick: 1, .. })));
        assert_eq!(wakes, 0);
        // Published later from another thread: the waker registered by the pending poll is
        // what brings the task back.
        let publisher = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                bus.publish(applied(2));
            })
        };
        let (e, wakes) = block_on(sub.recv());
        assert!(matches!(e, Ok(Event::Applied { tick: 2, .. })));
        assert!(wakes >= 1, "woken by the publisher");
        publisher.join().unwrap();
        // Closing wakes a waiting reader with `Disconnected` once the queue is drained.
        bus.publish(applied(3));
        let closer = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                bus.close();
            })
        };
        assert!(matches!(
            block_on(sub.recv()).0,
            Ok(Event::Applied { tick: 3, .. })
        ));
        assert_eq!(block_on(sub.recv()).0.unwrap_err(), RecvError::Disconnected);
        closer.join().unwrap();
    }

    #[test]
    fn an_async_reader_keeps_the_policies() {
        // A reader that polls only after many publishes sees what a blocking one would: the
        // newest audio, one coalesced stats event, every control event.
        let bus = EventBus::new(4);
        let sub = bus.subscribe();
        for t in 0..10 {
            bus.publish(audio(t));
            bus.publish(Event::Stats {
                tick: t,
                tick_ms: 0.0,
                decode_ms: 0.0,
                gen_per_s: 0.0,
                active_slots: 0,
                queue: 0,
                lead_ms: 0.0,
                realtime: Default::default(),
                knob_to_ear: Default::default(),
                loudness: Default::default(),
                idle: false,
            });
        }
        bus.publish(applied(7));
        let mut got = Vec::new();
        while let Some(e) = sub.try_recv().unwrap() {
            got.push(e);
        }
        let ticks: Vec<String> = got
            .iter()
            .map(|e| match e {
                Event::Audio(a) => format!("a{}", a.tick),
                Event::Stats { tick, .. } => format!("s{tick}"),
                Event::Applied { tick, .. } => format!("c{tick}"),
                _ => "?".into(),
            })
            .collect();
        assert_eq!(ticks, vec!["s9", "a8", "a9", "c7"]);
        // A future polled while the queue is empty and dropped (a `select!` that took another
        // branch) takes nothing: the event published after it goes to the next `recv`.
        {
            let mut pending = std::pin::pin!(sub.recv());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(pending.as_mut().poll(&mut cx).is_pending());
        }
        bus.publish(applied(8));
        assert!(matches!(
            block_on(sub.recv()).0,
            Ok(Event::Applied { tick: 8, .. })
        ));
    }

    #[test]
    fn replies_reach_threads_and_tasks_and_a_dropped_sender_is_reported() {
        let (tx, rx) = reply_channel::<u32>();
        tx.send(5);
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)), Ok(5));
        let (tx, rx) = reply_channel::<u32>();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(6);
        });
        let (v, wakes) = block_on(rx);
        assert_eq!((v, wakes >= 1), (Ok(6), true));
        t.join().unwrap();
        let (tx, rx) = reply_channel::<u32>();
        drop(tx);
        assert_eq!(block_on(rx).0, Err(ReplyError::Dropped));
        let (_tx, rx) = reply_channel::<u32>();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(1)),
            Err(ReplyError::Timeout)
        );
    }
}
