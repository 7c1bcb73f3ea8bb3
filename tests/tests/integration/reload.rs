//! nginx reload (SIGHUP) and graceful quit (SIGQUIT): subscribers get close 1001 and
//! resume without loss; no connection is left open.

use chatup_tests::{assert_message, Chatup, Subscriber};
use std::time::Duration;

const CLOSE_WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn reload_closes_with_1001_and_resume_loses_nothing() {
    let env = Chatup::start();
    let mut subs = env.subscribers_on_every_worker("/sub/rl").await;
    let texts: Vec<String> = (1..=3).map(|i| format!("m{i}")).collect();
    let ep = env.publish_to_all(&mut subs, "rl", &texts).await;

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
    env.expect_on_every_worker(
        &format!("/sub/rl?since=rl:{ep}:3"),
        "rl",
        4..=5,
        Duration::from_millis(300),
    )
    .await;
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
    let workers = env.all_worker_pids();
    env.signal_nginx(libc::SIGQUIT);
    for (sub, worker) in &mut subs {
        let (code, _) = sub.expect_close(CLOSE_WAIT).await;
        assert_eq!(code, Some(1001), "close code on quit (worker {worker})");
    }
    let status = env.wait_nginx_exit();
    assert!(status.success(), "nginx exits 0 on SIGQUIT, got {status}");
    assert!(env.wait_gone(&workers, CLOSE_WAIT), "workers gone");
    let alerts = env.grep_error_log("open socket");
    assert!(alerts.is_empty(), "open sockets left at quit: {alerts:?}");
    assert!(
        Subscriber::try_connect(&env, "/sub/q").await.is_err(),
        "nginx is gone"
    );
}

#[tokio::test]
async fn reload_tells_subscribers_at_once_while_other_connections_linger() {
    // Publishers' proxied WebSockets (and other open HTTP connections) keep an old worker
    // alive after a reload; its subscribers must still get 1001 right away, so they move
    // to the new workers.
    let env = Chatup::start();
    let mut subs = env.subscribers_on_every_worker("/sub/linger").await;
    // Hold a publisher and an idle connection on every worker.
    let mut publishers = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..6 {
        publishers.push(
            chatup_tests::Publisher::connect_ok(&env, &chatup_tests::token::token("pat")).await,
        );
        idle.push(
            tokio::net::TcpStream::connect(env.nginx_addr())
                .await
                .expect("connect"),
        );
    }
    env.publish("linger", "one").await;
    for (sub, _) in &mut subs {
        assert_message(&sub.recv().await, "linger", 1, "one");
    }
    let started = std::time::Instant::now();
    env.reload();
    for (sub, worker) in &mut subs {
        let (code, _) = sub.expect_close(CLOSE_WAIT).await;
        assert_eq!(code, Some(1001), "close code on reload (worker {worker})");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "subscribers were told after {:?}",
        started.elapsed()
    );
    drop(publishers);
    drop(idle);
}
