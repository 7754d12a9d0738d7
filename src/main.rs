// jemalloc as the process's malloc (unprefixed: libtorch's CPU tensors come from it too), keeping freed pages
// (no decay): the checks free and re-allocate parameter-sized tensors every step, and glibc returns every block
// above 32 MB to the kernel, so each re-allocation faulted in and zeroed its pages again (IMDB-style GDU: 2.1 M
// page faults, 6 s of system time; reports/performance.md, "Issue 15, fifth session"). `MALLOC_CONF` in the
// environment still overrides these options.
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(target_os = "linux")]
#[unsafe(export_name = "malloc_conf")]
#[allow(non_upper_case_globals)]
pub static malloc_conf: &[u8; 36] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1\0";

fn main() { std::process::exit(epcheck::cli::main()) }
