//! nginx reload (SIGHUP) and graceful quit (SIGQUIT): subscribers get close 1001 and
//! resume without loss; no connection is left open.

use chatup_tests::{assert_message, Chatup, Subscriber};
use std::time::Duration;

const CLOSE_WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn reload_closes_with_1001_and_resume_loses_nothing() {
    let env = Chatup::start();
    let mut subs = env.subscribers_on_every_worker("/sub/rl").await;
    let mut ep = 0;
    for i in 1..=3u64 {
        ep = env.publish("rl", &format!("m{i}")).await["ep"]
            .as_u64()
            .expect("ep");
    }
    for (sub, _) in &mut subs {
        let msgs = sub.recv_n(3).await;
        assert_message(&msgs[2], "rl", 3, "m3");
    }

    let old = env.reload();
    for (sub, worker) in &mut subs {
        let (code, extra) = sub.expect_close(CLOSE_WAIT).await;
        assert_eq!(code, Some(1001), "close code on reload (worker {worker})");
        assert!(extra.is_empty(), "no message before the close: {extra:?}");
    }
    assert!(
        env.wait_gone(&old, CLOSE_WAIT),
        "old workers {old:?} still run {CLOSE_WAIT:?} after the reload"
    );

    for i in 4..=5u64 {
        env.publish("rl", &format!("m{i}")).await;
    }
    for (sub, worker) in &subs {
        let since = sub.since_of("rl").expect("a position");
        assert_eq!(since, format!("rl:{ep}:3"), "worker {worker}");
    }
    for (mut again, _) in env
        .subscribers_on_every_worker(&format!("/sub/rl?since=rl:{ep}:3"))
        .await
    {
        let msgs = again.recv_n(2).await;
        assert_message(&msgs[0], "rl", 4, "m4");
        assert_message(&msgs[1], "rl", 5, "m5");
        again.expect_no_message(Duration::from_millis(300)).await;
    }
    let alerts = env.grep_error_log("open socket");
    assert!(alerts.is_empty(), "open sockets left at reload: {alerts:?}");
}

#[tokio::test]
async fn quit_closes_with_1001_and_leaves_no_socket() {
    let mut env = Chatup::start();
    let mut subs = env.subscribers_on_every_worker("/sub/q").await;
    env.publish("q", "hello").await;
    for (sub, _) in &mut subs {
        assert_message(&sub.recv().await, "q", 1, "hello");
    }
    // An idle HTTP keepalive connection too (nginx closes those itself).
    let _idle = tokio::net::TcpStream::connect(env.nginx_addr())
        .await
        .expect("connect");

    let workers = env.all_worker_pids();
    let quit = async {
        for (sub, worker) in &mut subs {
            let (code, _) = sub.expect_close(CLOSE_WAIT).await;
            assert_eq!(code, Some(1001), "close code on quit (worker {worker})");
        }
    };
    env.signal_nginx(libc::SIGQUIT);
    quit.await;
    let status = env.wait_nginx_exit();
    assert!(status.success(), "nginx exits 0 on SIGQUIT, got {status}");
    assert!(env.wait_gone(&workers, CLOSE_WAIT), "workers gone");
    let alerts = env.grep_error_log("open socket");
    assert!(alerts.is_empty(), "open sockets left at quit: {alerts:?}");
    let _ = Subscriber::try_connect(&env, "/sub/q")
        .await
        .err()
        .expect("nginx is gone");
}
