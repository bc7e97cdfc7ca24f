//! Compiles every API under `proto/` with the vendored `protoc` (no system install
//! needed) and writes one descriptor set per package for gRPC reflection.

use std::path::PathBuf;

const APIS: &[(&str, &str)] = &[
    ("marketdata", "exchange/marketdata/v1/marketdata.proto"),
    ("order", "exchange/order/v1/order.proto"),
    ("inventory", "exchange/inventory/v1/inventory.proto"),
    ("user", "exchange/user/v1/user.proto"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest.join("../../proto").canonicalize()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let wkt = protoc_bin_vendored::include_path()?;

    for (name, file) in APIS {
        let mut config = tonic_prost_build::Config::new();
        config.protoc_executable(&protoc);
        // RPCs a service has not implemented answer UNIMPLEMENTED.
        tonic_prost_build::configure()
            .generate_default_stubs(true)
            .file_descriptor_set_path(out_dir.join(format!("{name}_descriptor.bin")))
            .compile_with_config(
                config,
                &[proto_root.join(file)],
                &[proto_root.clone(), wkt.clone()],
            )?;
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }
    Ok(())
}
