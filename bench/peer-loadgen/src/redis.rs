//! Redis + Lua: each purchase is one `EVALSHA` of a script that decrements the SKU's stock if
//! at least 1 unit is left (Redis runs a script atomically, so this is its decrement-if-enough),
//! sent over raw RESP on one connection per client: no client library between the load and
//! the server, and no dependency to build.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::tcp::OwnedWriteHalf;

use crate::RunArgs;
use crate::cpu;
use crate::measure::Decision;
use crate::measure::Tally;
use crate::measure::Window;
use crate::report::Header;
use crate::report::RunResult;
use crate::report::Verdict;

#[derive(clap::Args, Debug, Clone)]
pub struct RedisArgs {
    /// The Redis server (the runner's own, on 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1:6393")]
    pub addr: String,
    #[command(flatten)]
    pub run: RunArgs,
}

/// The hot SKU's key; set afresh by every run (nothing else on the server is touched).
const KEY: &str = "flashledger-peer-bench:sku:1";

/// Returns 1 and sells `ARGV[1]` units if that many are left, else 0 and changes nothing.
const DECREMENT_IF_ENOUGH: &str = "local s = tonumber(redis.call('GET', KEYS[1]) or '0') \
local q = tonumber(ARGV[1]) \
if s >= q then redis.call('DECRBY', KEYS[1], q) return 1 else return 0 end";

/// Longest reply line read (an integer, a status, an error or a bulk length).
const REPLY_LINE_BYTES_MAX: u64 = 4096;
/// Longest bulk string read (a script's SHA or the stock).
const BULK_BYTES_MAX: usize = 1024;

pub async fn run(args: &RedisArgs) -> anyhow::Result<RunResult> {
    let run = &args.run;
    let timeout = run.request_timeout();
    let mut setup = Connection::connect(&args.addr, timeout).await?;
    let stock = run.stock.to_string();
    setup.expect_ok(&command(&["SET", KEY, &stock]), timeout).await?;
    let sha = match setup
        .call(&command(&["SCRIPT", "LOAD", DECREMENT_IF_ENOUGH]), timeout)
        .await?
    {
        Reply::Bulk(sha) => String::from_utf8(sha).context("script SHA")?,
        other => bail!("SCRIPT LOAD answered {other:?}"),
    };
    let purchase: Arc<[u8]> = command(&["EVALSHA", &sha, "1", KEY, "1"]).into();

    let window = Arc::new(Window::new(run));
    let sampler = tokio::spawn(cpu::measure_during(
        window.clone(),
        cpu::Servers::Pids(run.pids.clone()),
    ));
    let mut clients = Vec::new();
    for _ in 0..run.clients {
        let (addr, purchase, window) = (args.addr.clone(), purchase.clone(), window.clone());
        clients.push(tokio::spawn(
            async move { client(&addr, &purchase, &window, timeout).await },
        ));
    }
    let mut tally = Tally::new();
    for client in clients {
        tally.merge(&client.await.context("a client panicked")??);
    }
    let secs = window.measured_secs();
    window.stop();
    let cpu = sampler.await.context("the CPU sampler panicked")?;

    let final_stock = match setup.call(&command(&["GET", KEY]), timeout).await? {
        Reply::Bulk(value) => std::str::from_utf8(&value)?.parse().context("the stock")?,
        other => bail!("GET answered {other:?}"),
    };
    let verdict = Verdict {
        initial_stock: run.stock,
        acknowledged: tally.purchases_total(),
        final_stock,
        unanswered: tally.errors_total(),
    };
    let header = Header {
        system: "redis",
        label: &run.label,
        runner: &run.runner,
        client: "raw",
        clients: run.clients,
        stock: run.stock,
    };
    Ok(RunResult::new(&header, vec![tally.json(secs), cpu], verdict))
}

/// One closed-loop buyer. A request without a proper answer ends it: the connection's state
/// is unknown from then on.
async fn client(addr: &str, purchase: &[u8], window: &Window, timeout: Duration) -> anyhow::Result<Tally> {
    let mut connection = Connection::connect(addr, timeout).await?;
    let mut tally = Tally::new();
    while let Some(started) = window.next_start() {
        let reply = connection.call(purchase, timeout).await;
        let finished = Instant::now();
        let decision = match reply {
            Ok(Reply::Integer(1)) => Decision::Purchased,
            Ok(Reply::Integer(0)) => Decision::SoldOut,
            Ok(Reply::Error(message)) => {
                eprintln!("redis: purchase refused: {message}; this client stops");
                tally.failed();
                break;
            }
            other => {
                eprintln!("redis: purchase answered {other:?}; this client stops");
                tally.failed();
                break;
            }
        };
        tally.attempted(window, started, finished);
        tally.decided(window, decision, started, finished);
    }
    Ok(tally)
}

/// A RESP request (an array of bulk strings).
fn command(parts: &[&str]) -> Vec<u8> {
    let mut bytes = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        bytes.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        bytes.extend_from_slice(part.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    bytes
}

/// The replies this workload gets.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Integer(i64),
    Status(String),
    Error(String),
    Bulk(Vec<u8>),
    Nil,
}

struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Connection {
    async fn connect(addr: &str, timeout: Duration) -> anyhow::Result<Connection> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to Redis at {addr}: timed out"))?
            .with_context(|| format!("connecting to Redis at {addr}"))?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        Ok(Connection {
            reader: BufReader::new(reader),
            writer,
        })
    }

    /// Sends one request and reads its reply, within `timeout`.
    async fn call(&mut self, request: &[u8], timeout: Duration) -> anyhow::Result<Reply> {
        let exchange = async {
            self.writer.write_all(request).await?;
            self.read_reply().await
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .context("no reply in time")?
    }

    async fn expect_ok(&mut self, request: &[u8], timeout: Duration) -> anyhow::Result<()> {
        match self.call(request, timeout).await? {
            Reply::Status(status) if status == "OK" => Ok(()),
            other => bail!("expected OK, got {other:?}"),
        }
    }

    async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        let mut line = Vec::new();
        (&mut self.reader)
            .take(REPLY_LINE_BYTES_MAX)
            .read_until(b'\n', &mut line)
            .await?;
        let Some(body) = line.strip_suffix(b"\r\n") else {
            bail!("reply line cut or longer than {REPLY_LINE_BYTES_MAX} bytes: {line:?}");
        };
        let (kind, rest) = body.split_first().context("empty reply line")?;
        let text = std::str::from_utf8(rest).context("reply line")?;
        Ok(match kind {
            b':' => Reply::Integer(text.parse().context("integer reply")?),
            b'+' => Reply::Status(text.to_string()),
            b'-' => Reply::Error(text.to_string()),
            b'$' if text == "-1" => Reply::Nil,
            b'$' => {
                let len: usize = text.parse().context("bulk length")?;
                anyhow::ensure!(len <= BULK_BYTES_MAX, "bulk reply of {len} bytes");
                let mut bulk = vec![0; len + 2];
                self.reader.read_exact(&mut bulk).await?;
                bulk.truncate(len);
                Reply::Bulk(bulk)
            }
            _ => bail!("unexpected reply {body:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(command(&["GET", "k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[test]
    fn replies_are_read_one_at_a_time() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(replies_are_read_one_at_a_time_async());
    }

    async fn replies_are_read_one_at_a_time_async() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket
                .write_all(b":1\r\n+OK\r\n$2\r\n42\r\n$-1\r\n-ERR no\r\n")
                .await
                .unwrap();
            socket
        });
        let mut connection = Connection::connect(&addr, Duration::from_secs(5)).await.unwrap();
        let _socket = server.await.unwrap();
        assert_eq!(connection.read_reply().await.unwrap(), Reply::Integer(1));
        assert_eq!(connection.read_reply().await.unwrap(), Reply::Status("OK".into()));
        assert_eq!(connection.read_reply().await.unwrap(), Reply::Bulk(b"42".to_vec()));
        assert_eq!(connection.read_reply().await.unwrap(), Reply::Nil);
        assert_eq!(connection.read_reply().await.unwrap(), Reply::Error("ERR no".into()));
    }
}
