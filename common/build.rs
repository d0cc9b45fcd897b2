//! Generates the gRPC protocol code (`common::proto`) from `proto/*.proto` when the
//! `grpc` feature is on. `protoc` comes from `protoc-bin-vendored`, so a fresh machine
//! needs no system protobuf compiler.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "grpc")]
    grpc::generate();
}

#[cfg(feature = "grpc")]
mod grpc {
    const PROTOS: &[&str] = &["proto/compute.proto", "proto/tpcc.proto"];

    pub fn generate() {
        for p in PROTOS {
            println!("cargo:rerun-if-changed={p}");
        }
        let protoc = protoc_bin_vendored::protoc_bin_path()
            .expect("protoc-bin-vendored has no protoc for this platform");
        let mut config = tonic_build::Config::new();
        config.protoc_executable(protoc);
        tonic_build::configure()
            .compile_protos_with_config(config, PROTOS, &["proto"])
            .expect("compiling proto/*.proto");
    }
}
