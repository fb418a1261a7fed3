//! A test document, shared by the registrations unit tests and `benches/registrations.rs`.

/// A realistic Konnect-shaped document: 20-character Okta client ids, UUID application,
/// developer and product version ids, one or two registrations per app.
pub fn konnect_document(apps: usize, product: &str) -> Vec<u8> {
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
            r#"{{"client_id":"0oa{i:017}","application_id":"{}","developer_id":"{}","name":"Application number {i}","registrations":[{{"product":"{product}","status":"{status}"}}{second}]}}"#,
            uuid(1, i),
            uuid(2, i / 3),
        ));
    }
    out.push_str("]}");
    out.into_bytes()
}
