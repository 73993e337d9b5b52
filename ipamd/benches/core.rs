//! In-process micro-benchmarks of what every pod request or reconcile round runs inside ipamd (criterion):
//! the warm-pool planner, a datastore assign + release on a busy node, and the checkpoint's encoding and
//! durable write. `cargo bench -p ipamd --bench core`; `make bench` runs it with a short measurement time.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ipamd::clock::{Mono, Reading};
use ipamd::planner::{self, Limits, Targets};
use ipamd::state::checkpoint::{self, Checkpoint, Store};
use ipamd::state::datastore::{AllocKey, Datastore, ObservedEni};

/// A c5.4xlarge-like node: 4 ENIs of 29 secondary IPs, 100 pods.
fn busy_node() -> (Datastore, Vec<ObservedEni>) {
    let enis: Vec<ObservedEni> = (0..4u8)
        .map(|d| ObservedEni {
            id: format!("eni-{d:017x}"),
            mac: format!("02:00:00:00:00:{d:02x}"),
            device_number: u32::from(d),
            subnet_id: "subnet-0123456789abcdef0".into(),
            subnet_cidr: "10.0.0.0/16".parse().unwrap(),
            primary_ip: Ipv4Addr::new(10, 0, d, 4),
            secondary_ips: (0..29).map(|i| Ipv4Addr::new(10, 0, d, 10 + i)).collect(),
            unconfirmed: Vec::new(),
            ready: true,
            prefixes: Vec::new(),
            fallback: false,
        })
        .collect();
    let mut ds = Datastore::restore(BTreeMap::new(), [], Mono::default(), Duration::ZERO);
    ds.observe(enis.clone(), "eni-00000000000000000", Mono::default());
    for i in 0..100 {
        ds.assign(&key(i), "default", &format!("web-{i}"), Reading::default()).unwrap();
    }
    (ds, enis)
}

fn key(i: usize) -> AllocKey {
    AllocKey { network_name: "aws-cni".into(), container_id: format!("{i:064x}"), if_name: "eth0".into() }
}

fn checkpoint_of(ds: &Datastore, enis: Vec<ObservedEni>) -> Checkpoint {
    Checkpoint {
        allocations: ds.allocations.clone(),
        cooling: ds.cooling_wall(Reading::default()),
        node: None,
        limits: Some(Limits { max_enis: 8, ips_per_eni: 29, vcpus: 2 }),
        enis,
        aws_node_import: Default::default(),
    }
}

fn benches(c: &mut Criterion) {
    let (ds, enis) = busy_node();
    let limits = Limits { max_enis: 8, ips_per_eni: 29, vcpus: 2 };
    let view = ds.view(Mono::default());
    c.bench_function("planner: plan, 4 ENIs / 100 pods, WARM_ENI_TARGET=1", |b| {
        b.iter(|| planner::plan(black_box(&view), Targets { warm_eni: 1, ..Targets::default() }, limits))
    });
    c.bench_function("planner: plan, WARM_IP_TARGET=5 MINIMUM_IP_TARGET=110", |b| {
        b.iter(|| {
            planner::plan(
                black_box(&view),
                Targets { warm_eni: 0, warm_ip: Some(5), minimum_ip: Some(110), ..Targets::default() },
                limits,
            )
        })
    });
    c.bench_function("datastore: view of 4 ENIs / 100 pods", |b| b.iter(|| black_box(&ds).view(Mono::default())));
    let mut busy = ds.clone();
    c.bench_function("datastore: assign + release, 100 pods", |b| {
        b.iter(|| {
            let k = key(1000);
            busy.assign(&k, "default", "bench", Reading::default()).unwrap();
            busy.release(&k, Mono::default(), Duration::ZERO)
        })
    });
    let cp = checkpoint_of(&ds, enis);
    c.bench_function("checkpoint: encode, 100 pods + 4 ENIs", |b| {
        b.iter(|| checkpoint::encode(black_box(&cp).parts()))
    });
    let tmpfs = std::path::Path::new("/dev/shm");
    let dir = if tmpfs.is_dir() { tempfile::tempdir_in(tmpfs) } else { tempfile::tempdir() }.unwrap();
    let store = Store::new(dir.path());
    c.bench_function("checkpoint: durable save (tmpfs), 100 pods + 4 ENIs", |b| b.iter(|| store.save(&cp).unwrap()));
}

criterion_group! {
    name = core;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(core);
