//! End to end with authentication on: the real agent (redb buffer, sender) against the real
//! gateway over TLS, in the two production modes: `mtls` (the device id from the client
//! certificate's CN) and `file` (a password over a server-authenticated TLS connection). Every
//! reading the agent accepted is acked and spooled, exactly once; an agent whose certificate
//! names another device gets nothing in.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use breakwater_agent::config::AgentConfig;
use breakwater_agent::Agent;
use breakwater_gateway::{Config, Gateway};
use breakwater_protocol::Reading;
use breakwater_testkit::free_port;
use breakwater_testkit::pki::Pki;

/// A gateway over TLS only, with `pki`'s server certificate.
async fn gateway(pki: &Pki, tls_port: u16, auth: &str, client_ca: bool) -> Gateway {
    let dir = pki.dir.as_path();
    let d = dir.display();
    let tls = pki.gateway_tls_section(tls_port, client_ca);
    let toml = format!(
        r#"
[mqtt]
listen = "127.0.0.1:{plain}"
plaintext = false
{tls}
[spool]
dir = "{d}/spool"
[metrics]
listen = "127.0.0.1:0"
{auth}
"#,
        plain = free_port()
    );
    let cfg = Config::from_toml(&toml).unwrap();
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    Gateway::start(cfg).await.unwrap()
}

fn agent_config(
    dir: &Path,
    device: &str,
    port: u16,
    extra_gateway: &str,
    tls: &str,
) -> AgentConfig {
    let d = dir.display();
    AgentConfig::from_toml(&format!(
        r#"
device_id = "{device}"
[gateway]
address = "127.0.0.1:{port}"
{extra_gateway}
[gateway.tls]
ca_file = "{d}/ca.pem"
{tls}
[buffer]
dir = "{d}/agent-{device}"
[ingest]
enabled = false
[sender]
batch_max_readings = 50
[shutdown]
drain_timeout = "2s"
"#
    ))
    .unwrap()
}

async fn record(agent: &Agent, n: i64) {
    for i in 0..n {
        agent
            .record(Reading::new(
                "temp",
                i,
                1_764_115_200_000 + u64::try_from(i).unwrap(),
            ))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_over_mtls_deliver_everything_and_a_wrong_certificate_gets_nothing_in() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new(d);
    pki.issue_files("press-01", "press-01");
    pki.issue_files("press-02", "press-02");
    let port = free_port();
    let gw = gateway(&pki, port, "[auth]\nmode = \"mtls\"", true).await;

    let cert = |name: &str| {
        format!(
            "client_cert_file = \"{0}/{name}.pem\"\nclient_key_file = \"{0}/{name}.key\"",
            d.display()
        )
    };
    let good = Agent::start(agent_config(d, "press-01", port, "", &cert("press-01")))
        .await
        .unwrap();
    // press-03 presents press-02's certificate: refused (CONNACK 5), again and again.
    let impostor = Agent::start(agent_config(d, "press-03", port, "", &cert("press-02")))
        .await
        .unwrap();
    record(&good, 500).await;
    record(&impostor, 20).await;
    assert_eq!(good.flush(Duration::from_secs(60)).await.unwrap(), 500);
    assert_eq!(
        impostor.flush(Duration::from_secs(3)).await.unwrap_or(0),
        0,
        "nothing of the impostor is acked"
    );
    assert_eq!(
        gw.sequencer.devices(),
        1,
        "only press-01 reached the pipeline"
    );
    assert!(gw.admission.stats().certificate_mismatch >= 1);
    let report = impostor.shutdown().await;
    assert_eq!(
        report.left_buffered, 20,
        "the impostor keeps its readings: {report:?}"
    );
    good.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_password_over_tls_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new(d);
    let creds = d.join("credentials");
    std::fs::write(
        &creds,
        format!(
            "press-01:{}\n",
            breakwater_gateway::admission::hash_secret("tok-7f3a9c2e")
        ),
    )
    .unwrap();
    let port = free_port();
    let auth = format!(
        "[auth]\nmode = \"file\"\ncredentials_file = \"{}\"",
        creds.display()
    );
    let gw = gateway(&pki, port, &auth, false).await;
    let login = "username = \"press-01\"\npassword = \"tok-7f3a9c2e\"";
    let agent = Agent::start(agent_config(d, "press-01", port, login, ""))
        .await
        .unwrap();
    record(&agent, 300).await;
    assert_eq!(agent.flush(Duration::from_secs(60)).await.unwrap(), 300);
    agent.shutdown().await;
    gw.shutdown().await;
}
