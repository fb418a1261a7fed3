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

#[path = "../src/registrations/konnect_document.rs"]
mod konnect_document;
use konnect_document::konnect_document;

use okta_dcr_auth_core::registrations::{Registrations, Standing};

const APPS: usize = 100_000;
const PRODUCT: &str = "0000000a-5b6d-4e7f-8a9b-000000000001";

fn registrations(c: &mut Criterion) {
    let doc = konnect_document(APPS, PRODUCT);
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
