//! The buffer survives an upgrade: a buffer written by release 0.1.0 (committed under
//! `tests/fixtures/buffer-0.1.0/`) opens in this build with its epoch, sequence numbers and
//! unsent readings; a buffer of a newer or an older format is refused, untouched, with a
//! message that says what to do.
//!
//! The fixture is written by `write_fixture` below with the buffer API of the release it is
//! named after. Never regenerate it with a later version: it stands for files in the field.
//! (`BREAKWATER_WRITE_FIXTURES=1 cargo test -p breakwater-agent --test buffer_format --
//! --ignored write_fixture`, only when cutting a release that changes the format, into a new
//! directory named after that release; then update `EPOCH`.)
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use breakwater_agent::buffer::redb::{FILE_NAME, FORMAT};
use breakwater_agent::buffer::{AckOutcome, Buffer, OpenError, RedbBuffer, RedbOptions};
use breakwater_protocol::Reading;
use redb::{Database, TableDefinition};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const AGENT: &str = env!("CARGO_BIN_EXE_breakwater-agent");
/// The fixture's epoch (random when it was written).
const EPOCH: u64 = 8_961_628_533_991_945_391;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/buffer-0.1.0")
}

fn reading(seq: u64) -> Reading {
    Reading::new("temp", 20.5 + seq as f64, 1_700_000_000_000 + seq)
}

/// Writes the fixture: readings 1..=10 in three commits, acked up to 4 (a partly acked chunk
/// stays: 4..=5).
#[tokio::test]
#[ignore = "writes the committed fixture; see the module doc"]
async fn write_fixture() {
    if std::env::var_os("BREAKWATER_WRITE_FIXTURES").is_none() {
        return;
    }
    let dir = fixture_dir();
    let _ = std::fs::remove_file(dir.join(FILE_NAME));
    let b = RedbBuffer::open(&dir, RedbOptions::default()).unwrap();
    for seqs in [1..=3, 4..=5, 6..=10] {
        b.append(seqs.map(reading).collect()).await.unwrap();
    }
    b.ack(b.epoch(), 4).await.unwrap();
    println!("fixture epoch: {}", b.epoch());
}

fn copy_fixture() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_dir().join(FILE_NAME), tmp.path().join(FILE_NAME)).unwrap();
    tmp
}

fn set_format(dir: &Path, format: u64) {
    let db = Database::open(dir.join(FILE_NAME)).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("format", format)
        .unwrap();
    txn.commit().unwrap();
}

#[tokio::test]
async fn buffer_written_by_release_0_1_0_opens_with_its_unsent_readings() {
    let tmp = copy_fixture();
    {
        let b = RedbBuffer::open(tmp.path(), RedbOptions::default()).unwrap();
        let s = b.stats();
        assert_eq!(
            (s.epoch, s.first_seq, s.next_seq, s.readings),
            (EPOCH, 5, 11, 6)
        );
        assert_eq!(s.oldest_ts, Some(reading(5).ts));
        let got = b.read(5, 100, 1 << 20).await.unwrap();
        let want: Vec<(u64, Reading)> = (5..=10).map(|s| (s, reading(s))).collect();
        assert_eq!(got, want);

        // It goes on where it stopped: same epoch, the next seq, acks delete.
        let a = b.append(vec![reading(11)]).await.unwrap();
        assert_eq!((a.first_seq, a.last_seq), (11, 11));
        assert!(matches!(
            b.ack(EPOCH, 11).await.unwrap(),
            AckOutcome::Deleted { deleted: 7, .. }
        ));
    }
    let b = RedbBuffer::open(tmp.path(), RedbOptions::default()).unwrap();
    let s = b.stats();
    assert_eq!((s.epoch, s.next_seq, s.readings), (EPOCH, 12, 0));
}

/// Opening fails with `check`, the file is unchanged, and the agent binary says `needles`.
fn assert_refused(format: u64, check: fn(&OpenError) -> bool, needles: &[&str]) {
    let tmp = copy_fixture();
    set_format(tmp.path(), format);
    let file = tmp.path().join(FILE_NAME);
    let before = std::fs::read(&file).unwrap();

    let err = RedbBuffer::open(tmp.path(), RedbOptions::default()).unwrap_err();
    assert!(check(&err), "{err:?}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the file was modified"
    );

    let config = tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"fmt-01\"\n[gateway]\naddress = \"127.0.0.1:9\"\n\
             [buffer]\ndir = {:?}\n[ingest]\nenabled = false\n",
            tmp.path().display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(AGENT)
        .args(["run", "--config"])
        .arg(&config)
        .env("BREAKWATER_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} missing in {stderr}");
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the file was modified"
    );
}

#[test]
fn buffer_of_a_newer_format_is_refused_untouched_with_what_to_do() {
    assert_refused(
        FORMAT + 1,
        |e| matches!(e, OpenError::NewerFormat { found, .. } if *found == FORMAT + 1),
        &[
            "written by a newer breakwater-agent",
            "Install the newer version again",
            "move the file aside",
        ],
    );
}

#[test]
fn buffer_of_an_older_unreadable_format_is_refused_untouched_with_what_to_do() {
    assert_refused(
        1,
        |e| matches!(e, OpenError::OlderFormat { found: 1, .. }),
        &["format 1", "development build", "move the file aside"],
    );
}
