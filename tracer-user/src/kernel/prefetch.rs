//! Start-up work that does not depend on anything else (parsing the kernel's BTF for aya,
//! probing the kernel's BPF features, reading its tick rate) runs on its own thread from
//! launch, so it overlaps the rest of start-up instead of adding to it.

use std::{sync::Mutex, thread::JoinHandle};

/// A value computed on another thread, taken once where it is needed.
pub struct Prefetch<T>(Mutex<Option<JoinHandle<T>>>);

impl<T: Send + 'static> Prefetch<T> {
    pub const fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// Starts computing the value.
    pub fn start(&self, compute: impl FnOnce() -> T + Send + 'static) {
        let handle = std::thread::spawn(compute);
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(handle);
        }
    }

    /// The value, waiting for it if needed; None when it was never started (or its thread
    /// failed): the caller computes it then.
    pub fn take(&self) -> Option<T> {
        let handle = self.0.lock().ok()?.take()?;
        handle.join().ok()
    }
}

impl<T: Send + 'static> Default for Prefetch<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_is_taken_once() {
        static VALUE: Prefetch<u32> = Prefetch::new();
        assert_eq!(VALUE.take(), None);
        VALUE.start(|| 7);
        assert_eq!(VALUE.take(), Some(7));
        assert_eq!(VALUE.take(), None);
    }
}
