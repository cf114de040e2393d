//! Builds the XDP program so `cargo build` of this crate is all a user runs, and generates the
//! C header of the ABI (`src/ffi/`) with cbindgen into `OUT_DIR/provider.h`; a unit test
//! (`ffi::tests::header_is_current`) checks that the committed `include/provider.h` matches.
//!
//! `provider-ebpf` is its own nightly workspace (DESIGN §11): its `.cargo/config.toml` (target
//! `bpfel-unknown-none`, build-std) applies only when cargo runs inside that folder, so we run
//! `rustup run nightly cargo build` there with this build's compiler variables cleared, and
//! `include_bytes!` the object from OUT_DIR. (aya-build 0.2 expects the eBPF crate to be a member
//! of the calling workspace, which ours deliberately is not.)
use std::{env, path::PathBuf, process::Command};

fn main() {
    generate_header();
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest.join("../provider-ebpf");
    let common_dir = manifest.join("../provider-common");
    for path in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        // Its rustflags (target features) and toolchain change the object too.
        ebpf_dir.join(".cargo/config.toml"),
        ebpf_dir.join("rust-toolchain.toml"),
        common_dir.join("src"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-env-changed=PROVIDER_EBPF_OBJECT");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let dst = out_dir.join("provider-ebpf.o");

    // An escape hatch for machines without the nightly toolchain: a prebuilt object.
    if let Ok(prebuilt) = env::var("PROVIDER_EBPF_OBJECT") {
        std::fs::copy(&prebuilt, &dst).expect("copy PROVIDER_EBPF_OBJECT");
        return;
    }

    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&ebpf_dir)
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--locked",
            "--target-dir",
        ])
        .arg(&target_dir);
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO",
        "RUSTDOC",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|err| {
        panic!("cannot run rustup to build the XDP program: {err}\nhint: run `cargo xtask setup`")
    });
    if !status.success() {
        panic!(
            "building the XDP program failed ({status})\n\
             hint: run `cargo xtask setup` (nightly with rust-src, bpf-linker 0.10.4)"
        );
    }
    let object = target_dir.join("bpfel-unknown-none/release/provider");
    std::fs::copy(&object, &dst)
        .unwrap_or_else(|err| panic!("copy {} -> {}: {err}", object.display(), dst.display()));
}

/// `OUT_DIR/provider.h` from `src/ffi/` (only that module: the rest of the crate is not ABI).
/// A failure is a warning here; the header test then fails with the reason.
fn generate_header() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("provider.h");
    for path in [manifest.join("src/ffi"), manifest.join("cbindgen.toml")] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let result = cbindgen::Config::from_file(manifest.join("cbindgen.toml"))
        .map_err(|e| e.to_string())
        .and_then(|config| {
            cbindgen::Builder::new()
                .with_config(config)
                .with_src(manifest.join("src/ffi/mod.rs"))
                .generate()
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(bindings) => {
            bindings.write_to_file(&out);
        }
        Err(e) => {
            println!("cargo:warning=cbindgen: {e}");
            let _ = std::fs::write(&out, format!("/* cbindgen failed: {e} */\n"));
        }
    }
}
