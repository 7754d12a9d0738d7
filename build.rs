//! Link-time set-up for libtorch.
//!
//! * Sets an rpath to the libtorch folder that torch-sys linked against, so the binary and the tests run
//!   without `LD_LIBRARY_PATH` on the machine that built them (elsewhere, e.g. on a GPU machine with its own
//!   PyTorch 2.11, point `LD_LIBRARY_PATH` at that torch's `lib` folder).
//! * Links `libtorch_cuda` with `--no-as-needed` when it exists: nothing references its symbols directly,
//!   so without this flag the linker drops it and CUDA is silently unavailable at run time.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch folder; no rpath set");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-env=EPCHECK_LIBTORCH_LIB={lib}");
    // torch/version.py sits next to torch/lib in the PyTorch wheel: record the version in the manifest.
    let version_py = Path::new(&lib).join("..").join("version.py");
    if let Ok(text) = std::fs::read_to_string(&version_py) {
        if let Some(v) = text.lines().find_map(|l| l.strip_prefix("__version__ = ")) {
            println!("cargo:rustc-env=EPCHECK_LIBTORCH_VERSION={}", v.trim().trim_matches(|c| c == '\'' || c == '"'));
        }
    }
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
