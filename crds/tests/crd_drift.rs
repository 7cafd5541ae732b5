//! The committed CRD YAML must be exactly what the Rust types generate, so a
//! change to the types cannot ship without its schema.

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, crd) in vigil_crds::crds() {
        let generated = vigil_crds::crd_yaml(&crd).expect("CRD serialises");
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| {
            panic!("crds/{file} is missing ({e}); run `cargo run -p vigil-operator -- crd --out-dir crds`")
        });
        assert!(
            generated == committed,
            "crds/{file} differs from what the types generate; run `cargo run -p vigil-operator -- crd --out-dir crds` and commit the result"
        );
    }
}
