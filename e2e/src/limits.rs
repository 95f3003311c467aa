//! Process limits for tests that hold many connections.

/// Lets this test process hold `n` descriptors (1,000 client sockets and more), up to the hard
/// limit: some machines start tests with a soft limit of 1,024.
pub fn enough_descriptors(n: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    if l.current.is_some_and(|c| c < n) {
        let current = Some(l.maximum.map_or(n, |m| m.min(n)));
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current,
                maximum: l.maximum,
            },
        );
    }
}
