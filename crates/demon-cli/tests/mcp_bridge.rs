//! `demon mcp` with its server down or fed garbage (issue 10 item 9): stdout carries only
//! JSON-RPC, every request is answered within 2 s with an error naming the URL, malformed input
//! gets -32700, and notifications get nothing.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A loopback port nothing listens on: bound, then released.
fn unused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

#[test]
fn with_the_server_down_each_request_gets_a_json_rpc_error_naming_the_url() {
    let url = format!("http://127.0.0.1:{}", unused_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_demon"))
        .args(["mcp", "--url", &url])
        .env_remove("DEMON_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn demon mcp");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_reply = |what: &str| -> (Value, Duration) {
        let sent = Instant::now();
        let line = rx
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_else(|_| panic!("no reply within 2 s to {what}"));
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        assert_eq!(v["jsonrpc"], "2.0", "{line}");
        (v, sent.elapsed())
    };

    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;
    writeln!(stdin, "{init}").unwrap();
    stdin.flush().unwrap();
    let (v, took) = next_reply("initialize");
    assert_eq!(v["id"], 1);
    assert_eq!(v["error"]["code"], -32000);
    let msg = v["error"]["message"].as_str().expect("message");
    assert!(msg.contains(&format!("{url}/mcp")), "{msg}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // A notification is not answered, not even with an error; the next request is.
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
    )
    .unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","id":"two","method":"tools/list"}}"#
    )
    .unwrap();
    stdin.flush().unwrap();
    let (v, _) = next_reply("tools/list");
    assert_eq!(v["id"], "two");
    assert_eq!(v["error"]["code"], -32000);

    writeln!(stdin, "{{\"jsonrpc\": \"2.0\", \"id\": 3, \"method\"").unwrap();
    stdin.flush().unwrap();
    let (v, _) = next_reply("a truncated line");
    assert_eq!(v["id"], Value::Null);
    assert_eq!(v["error"]["code"], -32700);

    writeln!(stdin, "not json at all").unwrap();
    writeln!(stdin, "42").unwrap();
    stdin.flush().unwrap();
    let (v, _) = next_reply("garbage");
    assert_eq!(v["error"]["code"], -32700);
    let (v, _) = next_reply("a bare number");
    assert_eq!(v["error"]["code"], -32600);

    // A batch: one error per request in it.
    writeln!(
        stdin,
        r#"[{{"jsonrpc":"2.0","id":4,"method":"ping"}},{{"jsonrpc":"2.0","method":"notifications/x"}},{{"jsonrpc":"2.0","id":5,"method":"ping"}}]"#
    )
    .unwrap();
    stdin.flush().unwrap();
    let (a, _) = next_reply("batch request 4");
    let (b, _) = next_reply("batch request 5");
    assert_eq!((a["id"].clone(), b["id"].clone()), (4.into(), 5.into()));

    drop(stdin);
    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    assert!(status.success(), "{status}");
    let extra: Vec<String> = rx.try_iter().collect();
    assert!(extra.is_empty(), "nothing else on stdout: {extra:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("cannot reach"), "{stderr}");
}
