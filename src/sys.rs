//! The one place with `unsafe`: registering owned file descriptors (eventfd, pidfd, PSI trigger
//! files) with tokio's reactor.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Types that own their descriptor: it stays open, and the same, for as long as the value lives.
pub trait OwnsFd: AsRawFd {}
impl OwnsFd for OwnedFd {}
impl OwnsFd for File {}

/// `AsyncFd` for a value that owns its descriptor. Must be called inside a tokio runtime.
pub fn async_fd<T: OwnsFd>(inner: T, interest: Interest) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `register_with_interest` needs the descriptor to stay open and unchanged while the
    // AsyncFd lives. The AsyncFd takes ownership of `inner`, and `OwnsFd` is implemented only for
    // types that close their descriptor on drop and never replace it.
    unsafe { AsyncFd::register_with_interest(inner, interest) }.map_err(|e| e.into_parts().1)
}
