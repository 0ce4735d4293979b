//! How the server runs: addresses, the access token, the OSC sender allow-list, folders, and
//! the limits every surface enforces (through the service layer).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Size, rate and time limits. One place: every surface reads them from the service.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// JSON text frames and control bodies.
    pub max_text_bytes: usize,
    /// Binary frames and upload bodies.
    pub max_binary_bytes: usize,
    pub max_upload_seconds: f64,
    /// Samples over all channels of an upload (channels × rate × seconds), checked from the
    /// file's header before decoding: the cost of decoding, whatever the rate.
    pub max_upload_samples: u64,
    /// Control messages per second per WebSocket connection (token bucket, burst of the same
    /// size).
    pub max_controls_per_second: f64,
    /// How long a request waits for the runner (it answers between ticks).
    pub reply_timeout: Duration,
    /// How long an HTTP connection may take to send a request's complete headers, counted from
    /// the connect or from the end of the previous response: slow or partial headers, and
    /// keep-alive connections left idle, are closed after it. (A WebSocket, once upgraded, is
    /// not an HTTP connection any more and may stay quiet.)
    pub header_read_timeout: Duration,
    /// Deltas and messages waiting for one WebSocket client's socket, besides the one full
    /// frame it may have queued: past it deltas are skipped, and the client catches up with a
    /// full frame once the one it has is written.
    pub max_client_queue_bytes: usize,
    /// A WebSocket client may ask for a resync at most this often.
    pub min_resync_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_bytes: 64 * 1024,
            max_binary_bytes: 64 * 1024 * 1024,
            max_upload_seconds: 1200.0,
            max_upload_samples: 1200 * 48_000 * 2,
            max_controls_per_second: 200.0,
            reply_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_client_queue_bytes: 16 * 1024 * 1024,
            min_resync_interval: Duration::from_secs(1),
        }
    }
}

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub bind: SocketAddr,
    pub token: Option<String>,
    /// Extra `Host` names accepted without a token (`--allow-host`); loopback names and the
    /// bound address always are.
    pub allow_hosts: Vec<String>,
    /// Browser origins other than the server's own that may use it (`--allow-origin`).
    pub allow_origins: Vec<String>,
    /// OSC listener address; `None` disables OSC.
    pub osc_bind: Option<SocketAddr>,
    /// Senders whose OSC packets are applied (`--osc-allow ADDR/PREFIX`), besides loopback ones;
    /// packets from anyone else are dropped and counted. OSC carries no token, so an OSC
    /// listener on a non-loopback address needs this list.
    pub osc_allow: Vec<IpNet>,
    pub midi: bool,
    pub midi_map: PathBuf,
    pub recordings_dir: PathBuf,
    /// The only folders file-path sources are read from (`--media-dir`; relative to the
    /// current directory), besides the recordings folder.
    pub media_dirs: Vec<PathBuf>,
    pub limits: Limits,
    /// A state to start from (`demon serve --load`): a `load_preset` control, applied through
    /// the service before the server accepts connections.
    pub load: Option<demon_live::control::ControlMessage>,
}

impl ServerOptions {
    pub fn loopback(port: u16) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], port)),
            token: None,
            allow_hosts: Vec::new(),
            allow_origins: Vec::new(),
            osc_bind: Some(SocketAddr::from(([127, 0, 0, 1], port.wrapping_add(1)))),
            osc_allow: Vec::new(),
            midi: true,
            midi_map: default_midi_map(),
            recordings_dir: std::env::temp_dir().join("demon-recordings"),
            media_dirs: vec![PathBuf::from("media")],
            load: None,
            limits: Limits::default(),
        }
    }

    /// Refuse to expose the session without a guard: HTTP beyond loopback needs a token, OSC
    /// beyond loopback (which cannot carry one) a sender allow-list.
    pub fn check(&self) -> Result<(), String> {
        if let Some(t) = &self.token
            && t.len() < 8
        {
            return Err("the access token must be at least 8 characters".into());
        }
        if self.token.is_none() && !self.bind.ip().is_loopback() {
            return Err(format!(
                "refusing to listen on {} without an access token: pass --token TOKEN (every request must then carry it)",
                self.bind
            ));
        }
        if let Some(osc) = self.osc_bind
            && !osc.ip().is_loopback()
            && self.osc_allow.is_empty()
        {
            return Err(format!(
                "refusing to listen for OSC on {osc} without a sender allow-list: OSC carries no token, so anyone who can reach the port could play the session; pass --osc-allow ADDR/PREFIX (e.g. 192.168.1.0/24, repeatable) for the senders that may, or --no-osc"
            ));
        }
        Ok(())
    }

    /// Whether an OSC packet from `sender` is applied: loopback senders always are (the same
    /// machine), others only inside an `osc_allow` network.
    pub fn osc_sender_allowed(&self, sender: IpAddr) -> bool {
        let sender = sender.to_canonical();
        sender.is_loopback() || self.osc_allow.iter().any(|net| net.contains(sender))
    }
}

/// An address prefix, `ADDR/PREFIX` (`192.168.1.0/24`, `fd00::/8`) or a bare address (the
/// one host): what `--osc-allow` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix_bits: u8,
}

impl IpNet {
    /// `addr/prefix_bits`; the prefix must fit the address family (32 or 128 bits).
    pub fn new(addr: IpAddr, prefix_bits: u8) -> Result<Self, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_bits > max {
            return Err(format!(
                "`{addr}/{prefix_bits}`: the prefix length must be at most {max} for this address"
            ));
        }
        Ok(Self { addr, prefix_bits })
    }

    /// Whether `ip` lies inside: the first `prefix_bits` bits agree. An IPv4 address given as
    /// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack socket reports) is its IPv4 self.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_equal(&net.octets(), &ip.octets(), self.prefix_bits)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_equal(&net.octets(), &ip.octets(), self.prefix_bits)
            }
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` (big-endian, same length) agree.
fn prefix_equal(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[whole] & mask) == (b[whole] & mask)
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| {
                format!("`{s}` is not ADDR/PREFIX: `{addr}` is not an IPv4 or IPv6 address")
            })?;
        let prefix_bits = match prefix {
            None => {
                if addr.is_ipv4() {
                    32
                } else {
                    128
                }
            }
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| format!("`{s}` is not ADDR/PREFIX: `{p}` is not a prefix length"))?,
        };
        Self::new(addr, prefix_bits)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_bits)
    }
}

/// Where MIDI learn mappings are kept by default.
pub fn default_midi_map() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("demon").join("midi.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_parse_and_match_v4_and_v6() {
        let lan: IpNet = "192.168.1.0/24".parse().unwrap();
        assert_eq!(lan.to_string(), "192.168.1.0/24");
        assert!(lan.contains(ip("192.168.1.0")) && lan.contains(ip("192.168.1.255")));
        assert!(!lan.contains(ip("192.168.2.1")) && !lan.contains(ip("10.0.0.1")));
        // A prefix that does not end on a byte boundary.
        let odd: IpNet = "10.0.0.0/13".parse().unwrap();
        assert!(odd.contains(ip("10.7.255.255")));
        assert!(!odd.contains(ip("10.8.0.0")));
        // A bare address is the one host; /0 is everyone of that family.
        let host: IpNet = "10.1.2.3".parse().unwrap();
        assert_eq!(host.to_string(), "10.1.2.3/32");
        assert!(host.contains(ip("10.1.2.3")) && !host.contains(ip("10.1.2.4")));
        let any4: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(any4.contains(ip("203.0.113.9")) && !any4.contains(ip("2001:db8::1")));
        // A dual-stack socket reports IPv4 senders as IPv4-mapped IPv6.
        assert!(lan.contains(ip("::ffff:192.168.1.7")));

        let ula: IpNet = "fd00::/8".parse().unwrap();
        assert!(ula.contains(ip("fd12:3456::1")) && !ula.contains(ip("fe80::1")));
        let net6: IpNet = "[2001:db8:abcd::]/50".parse().unwrap();
        assert!(net6.contains(ip("2001:db8:abcd:3fff::1")));
        assert!(!net6.contains(ip("2001:db8:abcd:4000::1")));
        assert!(!net6.contains(ip("192.168.1.1")));
        let host6: IpNet = "::1".parse().unwrap();
        assert_eq!(host6.to_string(), "::1/128");

        for (bad, says) in [
            ("192.168.1.0/33", "at most 32"),
            ("fd00::/129", "at most 128"),
            ("192.168.1/24", "not an IPv4 or IPv6 address"),
            ("lan/24", "not an IPv4 or IPv6 address"),
            ("10.0.0.0/x", "not a prefix length"),
            ("10.0.0.0/-1", "not a prefix length"),
        ] {
            let e = bad.parse::<IpNet>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn osc_beyond_loopback_needs_an_allow_list() {
        let mut o = ServerOptions::loopback(7878);
        assert_eq!(o.check(), Ok(()));
        o.osc_bind = Some("0.0.0.0:7879".parse().unwrap());
        let e = o.check().unwrap_err();
        assert!(
            e.contains("0.0.0.0:7879") && e.contains("--osc-allow"),
            "{e}"
        );
        // A token does not help: OSC cannot carry it.
        o.token = Some("a-long-token".into());
        assert!(o.check().unwrap_err().contains("--osc-allow"));
        o.osc_allow = vec!["192.168.1.0/24".parse().unwrap()];
        assert_eq!(o.check(), Ok(()));
        o.token = None;
        assert_eq!(o.check(), Ok(()), "HTTP stays on loopback: no token needed");
        o.bind = "0.0.0.0:7878".parse().unwrap();
        assert!(o.check().unwrap_err().contains("--token"));
    }

    #[test]
    fn loopback_senders_pass_and_others_only_inside_the_list() {
        let mut o = ServerOptions::loopback(7878);
        o.osc_bind = Some("0.0.0.0:7879".parse().unwrap());
        o.osc_allow = vec![
            "192.168.1.0/24".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ];
        for (sender, allowed) in [
            ("127.0.0.1", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("192.168.1.20", true),
            ("::ffff:192.168.1.20", true),
            ("fd00::5", true),
            ("192.168.0.20", false),
            ("10.0.0.1", false),
            ("2001:db8::1", false),
        ] {
            assert_eq!(o.osc_sender_allowed(ip(sender)), allowed, "{sender}");
        }
    }
}
