//! The local NDJSON ingest endpoint of a running `Agent`: replies, isolation, rejects, metrics.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use breakwater_agent::config::AgentConfig;
use breakwater_agent::Agent;
use breakwater_protocol::{Reading, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(20);

async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> serde_json::Value {
    let mut line = String::new();
    tokio::time::timeout(T, r.read_line(&mut line))
        .await
        .expect("no reply within 20s")
        .unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?} is not JSON: {e}"))
}

async fn get_metrics(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test]
async fn malformed_lines_get_errors_and_never_disturb_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AgentConfig::with_defaults("ingest-test".parse().unwrap());
    cfg.buffer.dir = dir.path().to_owned();
    cfg.ingest.listen = "127.0.0.1:0".parse().unwrap();
    cfg.ingest.max_line_bytes = 256;
    cfg.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    // No gateway: nothing is acked, everything stays buffered.
    cfg.gateway.addresses = vec![breakwater_agent::config::GatewayAddress::new(
        "127.0.0.1",
        breakwater_testkit::free_port(),
    )];
    let agent = Agent::start(cfg).await.unwrap();
    let addr = agent.ingest_addr().unwrap();

    // A misbehaving client: a huge line without a newline, kept open.
    let mut hog = TcpStream::connect(addr).await.unwrap();
    hog.write_all(&vec![b'x'; 10_000]).await.unwrap();

    let (rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
    let mut rd = BufReader::new(rd);
    let long = format!("{{\"metric\":\"{}\",\"value\":1}}", "m".repeat(300));
    let input = [
        r#"{"metric":"temp","value":21.5,"ts":1764115200000}"#,
        r#"{"metric":"temp","value":"#,
        long.as_str(),
        "",
        r#"{"metric":"","value":1}"#,
        r#"{"metric":"temp","value":null}"#,
        r#"{"metric":"count","value":7}"#,
        "\u{0}\u{1}garbage",
        r#"{"metric":"on","value":true}"#,
    ];
    let mut text = input.join("\n");
    text.push('\n');
    wr.write_all(text.as_bytes()).await.unwrap();
    let mut replies = Vec::new();
    for _ in 0..8 {
        replies.push(reply(&mut rd).await);
    }
    let ok: Vec<bool> = replies.iter().map(|r| r["ok"].as_bool().unwrap()).collect();
    assert_eq!(
        ok,
        [true, false, false, false, false, true, false, true],
        "{replies:?}"
    );
    let seqs: Vec<u64> = replies.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 2, 3], "valid lines get consecutive seqs in order");
    let err = |i: usize| replies[i]["error"].as_str().unwrap().to_owned();
    assert!(err(1).contains("invalid JSON"), "{}", err(1));
    assert!(err(2).contains("limit is 256"), "{}", err(2));
    assert!(err(3).contains("metric name is empty"), "{}", err(3));
    assert!(err(4).contains("found null"), "{}", err(4));

    // The client that sent garbage is still served, and so is a new one, while the hog hangs.
    wr.write_all(b"{\"metric\":\"temp\",\"value\":22}\n")
        .await
        .unwrap();
    assert_eq!(reply(&mut rd).await["seq"].as_u64(), Some(4));
    let (rd2, mut wr2) = TcpStream::connect(addr).await.unwrap().into_split();
    let mut rd2 = BufReader::new(rd2);
    wr2.write_all(b"{\"metric\":\"x\",\"value\":-3}\n")
        .await
        .unwrap();
    assert_eq!(reply(&mut rd2).await["seq"].as_u64(), Some(5));

    // The hog's line, once terminated, is answered with an error.
    hog.write_all(b"\n").await.unwrap();
    let mut hog_reply = String::new();
    let mut hog_rd = BufReader::new(&mut hog);
    tokio::time::timeout(T, hog_rd.read_line(&mut hog_reply))
        .await
        .unwrap()
        .unwrap();
    assert!(
        hog_reply.contains("\"ok\":false") && hog_reply.contains("10000 bytes"),
        "{hog_reply}"
    );

    // What was confirmed is in the buffer, as sent.
    let stored = agent.buffer().read(1, 100, usize::MAX).await.unwrap();
    assert_eq!(stored.len(), 5);
    assert_eq!(stored[0].1, Reading::new("temp", 21.5, 1_764_115_200_000));
    assert_eq!(stored[1].1.value, Value::I64(7));
    assert_eq!(stored[2].1.value, Value::Bool(true));

    // Rejects are counted by reason on the metrics endpoint.
    let m = get_metrics(agent.metrics_addr().unwrap()).await;
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    for (reason, n) in [("invalid_json", 2), ("too_long", 2), ("invalid_reading", 2)] {
        let line =
            format!("breakwater_agent_ingest_rejected_lines_total{{reason=\"{reason}\"}} {n}");
        assert!(m.contains(&line), "missing {line:?} in:\n{m}");
    }
    assert!(
        m.contains("breakwater_agent_buffer_depth_readings 5"),
        "{m}"
    );
    assert!(
        m.contains("breakwater_agent_ingest_accepted_lines_total 5"),
        "{m}"
    );

    let report = agent.shutdown().await;
    assert_eq!(report.left_buffered, 5);
    assert!(!report.sender.drained);
}

#[tokio::test]
async fn with_the_block_policy_a_full_buffer_holds_the_reply_until_an_ack_frees_room() {
    use breakwater_agent::buffer::{memory::record_size, Buffer, FullPolicy, MemoryBuffer};
    use std::sync::Arc;

    let mut cfg = AgentConfig::with_defaults("ingest-block".parse().unwrap());
    cfg.ingest.listen = "127.0.0.1:0".parse().unwrap();
    cfg.gateway.addresses = vec![breakwater_agent::config::GatewayAddress::new(
        "127.0.0.1",
        breakwater_testkit::free_port(),
    )]; // no gateway: only our ack frees room
    let one = record_size(&Reading::new("t", Value::I64(0), 0));
    let buffer = Arc::new(MemoryBuffer::new(one * 10, FullPolicy::Block));
    let agent = Agent::start_with(cfg, buffer.clone(), None).await.unwrap();
    let (rd, mut wr) = TcpStream::connect(agent.ingest_addr().unwrap())
        .await
        .unwrap()
        .into_split();
    let mut rd = BufReader::new(rd);
    let line = |i: u64| format!("{{\"metric\":\"t\",\"value\":{i},\"ts\":0}}\n");
    let mut confirmed = 0u64;
    for i in 0..10 {
        wr.write_all(line(i).as_bytes()).await.unwrap();
        assert_eq!(reply(&mut rd).await["seq"].as_u64(), Some(i + 1));
        confirmed += 1;
    }
    assert_eq!(confirmed, 10);
    // The buffer is full: the 11th line is read but its append waits, so no reply comes.
    wr.write_all(line(10).as_bytes()).await.unwrap();
    let mut pending = String::new();
    let waited = tokio::time::timeout(Duration::from_millis(500), rd.read_line(&mut pending)).await;
    assert!(
        waited.is_err(),
        "got a reply while the buffer was full: {pending:?}"
    );
    assert_eq!(buffer.stats().readings, 10);
    assert_eq!(buffer.stats().dropped_total, 0);
    // An ack frees room: the waiting line is stored and answered.
    buffer.ack(buffer.epoch(), 3).await.unwrap();
    let mut line11 = pending;
    tokio::time::timeout(T, rd.read_line(&mut line11))
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line11).unwrap();
    assert_eq!(v["seq"].as_u64(), Some(11), "{line11}");
    agent.shutdown().await;
}
