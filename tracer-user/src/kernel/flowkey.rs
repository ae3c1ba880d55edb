//! Flow keys as userspace shows them. Kernels before 5.12 key flows by the socket's kernel
//! address (tracing programs cannot ask for the socket cookie there; see
//! `KernelOffsets::flow_key_is_address`). Printing those would publish kernel addresses in
//! logs and trace files (defeating KASLR), so they are turned into opaque numbers by a
//! bijection seeded per run, and back when a kernel table is looked up. Cookies pass as
//! they are.

/// An odd multiplier: multiplication by it is a bijection on u64.
const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// `MULTIPLIER`'s inverse modulo 2^64 (Newton's iteration, at compile time).
const INVERSE: u64 = {
    let mut inverse: u64 = MULTIPLIER;
    let mut step = 0;
    while step < 6 {
        inverse = inverse.wrapping_mul(2u64.wrapping_sub(MULTIPLIER.wrapping_mul(inverse)));
        step += 1;
    }
    inverse
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKeys {
    /// 0: keys are cookies, shown as they are.
    secret: u64,
}

impl FlowKeys {
    /// Keys shown as the kernel gives them (socket cookies).
    pub const COOKIES: Self = Self { secret: 0 };

    /// Keys that are kernel addresses: hidden behind a secret drawn for this run. Its low
    /// bits are set, so no (8-aligned) address maps to 0, which means "no socket".
    pub fn addresses() -> Self {
        let mut secret = [0u8; 8];
        // SAFETY: getrandom into a local buffer of the given length.
        let filled = unsafe { libc::getrandom(secret.as_mut_ptr().cast(), secret.len(), 0) };
        let mut secret = u64::from_ne_bytes(secret);
        if filled != 8 {
            // No entropy source: the clock still hides the address from a casual reader.
            secret = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x5eed, |d| d.as_nanos() as u64);
        }
        Self {
            secret: secret | 0b111,
        }
    }

    /// The key as shown (in events, findings and lookups by userspace).
    pub fn shown(self, kernel: u64) -> u64 {
        if self.secret == 0 || kernel == 0 {
            return kernel;
        }
        (kernel ^ self.secret).wrapping_mul(MULTIPLIER)
    }

    /// The kernel's key for a shown one.
    pub fn kernel(self, shown: u64) -> u64 {
        if self.secret == 0 || shown == 0 {
            return shown;
        }
        shown.wrapping_mul(INVERSE) ^ self.secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_pass_unchanged() {
        assert_eq!(FlowKeys::COOKIES.shown(42), 42);
        assert_eq!(FlowKeys::COOKIES.kernel(42), 42);
    }

    #[test]
    fn addresses_are_hidden_and_come_back() {
        assert_eq!(MULTIPLIER.wrapping_mul(INVERSE), 1);
        let keys = FlowKeys::addresses();
        for address in [0xffff_8880_0a1b_2c40u64, 0xffff_9abc_0000_0008, 8] {
            let shown = keys.shown(address);
            assert_ne!(shown, address);
            assert_ne!(shown, 0, "no address is shown as 'no socket'");
            assert_eq!(keys.kernel(shown), address);
        }
        assert_eq!(keys.shown(0), 0);
        assert_eq!(keys.kernel(0), 0);
    }
}
