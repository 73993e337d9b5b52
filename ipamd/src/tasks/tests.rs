use std::time::Duration;

use super::*;

async fn never() -> Result<(), String> {
    std::future::pending().await
}

#[tokio::test]
async fn supervised_task_that_returns_early_is_fatal_and_named() {
    let mut sup = Supervisor::new();
    let tasks = sup.tasks();
    tasks.spawn("forever", never());
    tasks.spawn("reconcile", async { Ok::<(), String>(()) });
    let ended = sup.watch(std::future::pending()).await.unwrap_err();
    assert_eq!(ended.task, "reconcile");
    assert_eq!(ended.outcome, Outcome::Returned);
    assert_eq!(sup.stop_all().await, vec!["forever".to_string()]);
}

#[tokio::test]
async fn supervised_task_error_and_panic_carry_their_cause() {
    let mut sup = Supervisor::new();
    sup.tasks().spawn("metrics", async { Err::<(), _>("address in use") });
    let e = sup.watch(std::future::pending()).await.unwrap_err();
    assert_eq!((e.task.as_str(), e.outcome), ("metrics", Outcome::Failed("address in use".into())));

    let mut sup = Supervisor::new();
    sup.tasks().spawn("gc", async {
        let v: Vec<u32> = Vec::new();
        let _ = v[3];
        Ok::<(), String>(())
    });
    let e = sup.watch(std::future::pending()).await.unwrap_err();
    assert!(matches!(&e.outcome, Outcome::Panicked(m) if m.contains("index out of bounds")), "{e}");
}

#[tokio::test]
async fn supervised_thread_panic_is_fatal() {
    let mut sup = Supervisor::new();
    sup.tasks()
        .spawn_thread("pool", || async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("actor broke");
        })
        .unwrap();
    let e = sup.watch(std::future::pending()).await.unwrap_err();
    assert_eq!((e.task.as_str(), e.outcome), ("pool", Outcome::Panicked("actor broke".into())));
}

#[tokio::test]
async fn supervised_job_may_finish_but_not_fail() {
    let mut sup = Supervisor::new();
    let tasks = sup.tasks();
    tasks.spawn_job("install", async {});
    // The job's end is reported and passed over; then SIGTERM ends the watch normally.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = tx.send(());
    });
    sup.watch(async {
        let _ = rx.await;
    })
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn supervised_loop_that_stops_beating_counts_as_dead() {
    let mut sup = Supervisor::new();
    let tasks = sup.tasks();
    let hb = tasks.heartbeat("reconcile", Duration::from_secs(5));
    let beating = hb.clone();
    tasks.spawn("reconcile", async move {
        for _ in 0..3 {
            beating.beat(Duration::from_secs(10));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Stuck: still running, no more rounds.
        std::future::pending::<Result<(), String>>().await
    });
    let started = Instant::now();
    let e = sup.watch(std::future::pending()).await.unwrap_err();
    assert_eq!(e.task, "reconcile");
    assert!(matches!(&e.outcome, Outcome::Stalled(m) if m.contains("10.0s")), "{e}");
    // Last beat at 2 s promised the next within 10 s: dead at 12 s, seen within one check.
    let at = started.elapsed();
    assert!(at >= Duration::from_secs(12) && at <= Duration::from_secs(12) + CHECK_EVERY * 2, "{at:?}");
}

#[tokio::test]
async fn supervised_shutdown_lets_graceful_tasks_finish_and_stops_the_rest() {
    let mut sup = Supervisor::new();
    let tasks = sup.tasks();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let graceful = tasks.clone();
    tasks.spawn("grpc", async move {
        graceful.shutdown_started().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = done_tx.send(());
        Ok::<(), String>(())
    });
    tasks.spawn("watch", never());
    sup.watch(async {}).await.unwrap();
    sup.begin_shutdown();
    done_rx.await.unwrap();
    let stopped = sup.stop_all().await;
    assert_eq!(stopped, vec!["watch".to_string()], "grpc ended by itself");
}
