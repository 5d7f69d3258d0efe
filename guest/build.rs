//! Passes the linker script by absolute path: rustflags cannot expand
//! `CARGO_MANIFEST_DIR`, and a relative path would depend on the directory
//! cargo happens to invoke the linker from.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
