//! Registrations at scale, natively: parsing a 100,000-application registrations document for
//! one product, the per-request lookup (one hash lookup: a registered id, an unknown one),
//! and decoding the compact shared form (what every other worker does after a change). `cargo
//! bench --bench registrations`. The sizes (document, index, compact form) are printed once.
//!
//! The document is Konnect-shaped: 20-character Okta client ids, UUID application, developer
//! and product version ids, a name, one or two registrations per app.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

use okta_dcr_auth_core::registrations::{Registrations, Standing};

const APPS: usize = 100_000;
const PRODUCT: &str = "0000000a-5b6d-4e7f-8a9b-000000000001";

fn document(apps: usize) -> Vec<u8> {
    let uuid = |kind: u32, i: usize| format!("{kind:08x}-5b6d-4e7f-8a9b-{i:012x}");
    let mut out = String::from("{\"applications\":[");
    for i in 0..apps {
        if i > 0 {
            out.push(',');
        }
        let status = ["approved", "pending", "revoked", "rejected"][i % 4];
        let second = if i % 2 == 0 {
            format!(
                r#",{{"product":"{}","status":"approved"}}"#,
                uuid(3, i % 50)
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            r#"{{"client_id":"0oa{i:017}","application_id":"{}","developer_id":"{}","name":"Application number {i}","registrations":[{{"product":"{PRODUCT}","status":"{status}"}}{second}]}}"#,
            uuid(1, i),
            uuid(2, i / 3),
        ));
    }
    out.push_str("]}");
    out.into_bytes()
}

fn registrations(c: &mut Criterion) {
    let doc = document(APPS);
    let regs = Registrations::parse(&doc, PRODUCT).unwrap();
    let compact = regs.encode(1);
    println!(
        "registrations: {APPS} apps, document {} bytes, index {} bytes in memory, compact shared form {} bytes",
        doc.len(),
        regs.memory_bytes(),
        compact.len()
    );
    let mut group = c.benchmark_group("registrations");
    group.sample_size(10);
    group.bench_function("parse 100k apps", |b| {
        b.iter(|| Registrations::parse(black_box(&doc), PRODUCT).unwrap())
    });
    group.bench_function("decode compact 100k apps", |b| {
        b.iter(|| Registrations::decode(black_box(&compact), PRODUCT).unwrap())
    });
    group.finish();
    let known = "0oa00000000000054320";
    assert!(matches!(regs.lookup(known), Standing::Approved(_)));
    c.bench_function("registrations lookup (approved)", |b| {
        b.iter(|| regs.lookup(black_box(known)))
    });
    c.bench_function("registrations lookup (unknown)", |b| {
        b.iter(|| regs.lookup(black_box("0oaUnknownClient0000")))
    });
}

criterion_group!(benches, registrations);
criterion_main!(benches);
