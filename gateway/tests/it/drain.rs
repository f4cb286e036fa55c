//! The drain on shutdown: readiness turns false at the signal while the node still
//! accepts, then the listener closes and clients get 3001 spread over the window.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test]
async fn shutdown_turns_readiness_off_first_then_spreads_the_closes() {
    const CLIENTS: usize = 40;
    let delay = Duration::from_millis(800);
    let window = Duration::from_secs(2);
    let mut gw = TestGateway::with(|c| {
        c.shutdown.readiness_delay = delay;
        c.shutdown.drain_window = window;
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut c = gw.client(&i.to_string()).await;
        c.subscribe("room").await;
        clients.push(c);
    }

    let signalled = Instant::now();
    gw.signal_shutdown();
    while gw.node.is_ready() {
        assert!(signalled.elapsed() < delay / 4, "readiness still on");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Load balancers may still send a client or two: it is served, not refused.
    let late = gw.client("late").await;
    assert!(signalled.elapsed() < delay, "the late client came in time");
    clients.push(late);

    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let code = c.closed().await;
                (code, signalled.elapsed())
            })
        })
        .collect();
    let mut at = Vec::new();
    for w in waits {
        let (code, t) = w.await.unwrap();
        assert_eq!(code, (3001, "shutdown".to_string()));
        at.push(t);
    }
    at.sort();
    let n = at.len();
    assert!(
        at[0] >= delay,
        "first close {:?} before the readiness delay",
        at[0]
    );
    assert!(
        at[n - 1] >= delay + window.mul_f64(0.8),
        "closes not spread: last at {:?}",
        at[n - 1]
    );
    assert!(
        at[n - 1] < delay + window + Duration::from_secs(1),
        "last at {:?}",
        at[n - 1]
    );
    // Evenly spread, a quarter second holds n/8 closes; allow twice that and two.
    let slice = Duration::from_millis(250);
    let bound = 2 * n.div_ceil(8) + 2;
    for (i, &start) in at.iter().enumerate() {
        let within = at[i..].iter().take_while(|&&t| t < start + slice).count();
        assert!(
            within <= bound,
            "{within} closes within 250 ms of {start:?}: {at:?}"
        );
    }
    assert!(ws_connect(gw.addr, &[]).await.is_err(), "listener closed");
    gw.shutdown().await;
    assert_eq!(gw.node.metrics.connections.get(), 0);
}
