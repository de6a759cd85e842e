//! Resource bounds against hostile clients, through real node processes: a thousand
//! connections that never send a byte, and Watch streams beyond the bounds, cannot take the
//! node's file descriptors or starve a normal caller (who comes from another address: the
//! attacker connects from 127.0.0.2, which Linux routes over loopback like 127.0.0.1).

#![cfg(not(madsim))]

mod process_support;

use std::time::Duration;
use std::time::Instant;

use flashledger_proto::v1 as pb;
use flashledger_proto::v1::inventory_client::InventoryClient;
use process_support::ProcessCluster;
use process_support::stderr;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Whether the server closed `stream` (EOF or reset); data it sent (HTTP/2 settings) is read
/// and dropped.
fn closed_by_server(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn silent_and_excess_connections_are_closed_and_others_are_still_served() {
    let cluster = ProcessCluster::start_with(
        3,
        false,
        "[server]\nconnections_per_address_max = 64\nconnection_idle_timeout_ms = 3000\n",
    );
    let put = cluster.cli(&["put-sku", "sneaker", "--total", "10"]);
    assert!(put.status.success(), "{}", stderr(&put));
    let pid = cluster.pid(1).expect("node 1 runs");
    let fds_before = open_fds(pid);
    let addr: std::net::SocketAddr = cluster.addrs[0].parse().expect("address");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..1000 {
            let socket = TcpSocket::new_v4().expect("socket");
            socket
                .bind("127.0.0.2:0".parse().expect("address"))
                .expect("bind 127.0.0.2");
            if let Ok(stream) = socket.connect(addr).await {
                held.push(stream);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let open = held.iter().filter(|stream| !closed_by_server(stream)).count();
        assert!(
            open <= 64,
            "{open} of 1000 silent connections from one address are open"
        );
        let fds_during = open_fds(pid);
        assert!(
            fds_during <= fds_before + 64 + 16,
            "node 1 holds {fds_during} fds (was {fds_before})"
        );

        // Meanwhile a normal caller from another address is served.
        let started = Instant::now();
        let get = cluster.cli(&[
            "get",
            "sneaker",
            "--stale-max-lag",
            "1000",
            "--seeds",
            &cluster.addrs[0],
        ]);
        assert!(get.status.success(), "{}", stderr(&get));
        eprintln!(
            "a read (new CLI process, new connection) with {open} silent connections held: {:?}",
            started.elapsed()
        );

        // Silent connections do not outlive the idle timeout.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let open = held.iter().filter(|stream| !closed_by_server(stream)).count();
            if open == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{open} silent connections still open after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let fds_after = open_fds(pid);
    assert!(
        fds_after <= fds_before + 8,
        "node 1 holds {fds_after} fds (was {fds_before})"
    );
}

#[test]
fn watch_streams_are_bounded_per_connection_and_per_node() {
    let cluster = ProcessCluster::start_with(
        3,
        false,
        "[server]\nwatch_streams_max = 10\nwatch_streams_per_connection_max = 4\n",
    );
    let put = cluster.cli(&["put-sku", "sneaker", "--total", "10"]);
    assert!(put.status.success(), "{}", stderr(&put));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let connect = || async {
            let channel = tonic::transport::Channel::from_shared(format!("http://{}", cluster.addrs[0]))
                .expect("uri")
                .connect()
                .await
                .expect("connect");
            InventoryClient::new(channel)
        };
        let everything = pb::WatchRequest {
            start: Default::default(),
            end: Default::default(),
            from_index: 0,
            progress_interval_ms: 0,
        };
        let mut streams = Vec::new();
        let mut first = connect().await;
        for _ in 0..4 {
            streams.push(
                first
                    .watch(everything.clone())
                    .await
                    .expect("a watch within the bounds"),
            );
        }
        let refused = first
            .watch(everything.clone())
            .await
            .expect_err("a fifth on one connection");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        assert!(
            refused.message().contains("watch_streams_per_connection_max"),
            "{refused:?}"
        );

        let mut others = Vec::new();
        for _ in 0..2 {
            let mut client = connect().await;
            for _ in 0..3 {
                streams.push(
                    client
                        .watch(everything.clone())
                        .await
                        .expect("a watch within the bounds"),
                );
            }
            others.push(client);
        }
        assert_eq!(streams.len(), 10);
        let mut last = connect().await;
        let refused = last
            .watch(everything.clone())
            .await
            .expect_err("an eleventh on the node");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("watch_streams_max"), "{refused:?}");

        // A stream that ends gives its slot back.
        drop(streams.pop());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match last.watch(everything.clone()).await {
                Ok(stream) => {
                    streams.push(stream);
                    break;
                }
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                    assert!(Instant::now() < deadline, "the dropped stream's slot never came back");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        // The streams work: the current state arrives on one.
        let change = streams[0].get_mut().message().await.expect("stream").expect("a change");
        assert_eq!(change.sku.as_ref(), b"sneaker");
    });
}
