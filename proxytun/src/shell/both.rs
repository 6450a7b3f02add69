//! One packet thread for both directions (`tun.threads = 1`): it polls the
//! TUN and the tunnel socket together and runs a turn of whichever is
//! ready, ingress first.
//!
//! Why: on a node with one or two CPUs the two direction threads of the
//! default layout compete with the containers' own processes, and every
//! batch costs a wake-up and a context switch; one thread that does both
//! directions halves those, and takes the core's mutex uncontended. On a
//! bigger node the two threads run the directions in parallel, which is
//! why `auto` picks by CPU count (`docs/operations.md`).

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use super::egress::Egress;
use super::ingress::Ingress;
use super::shared::Shared;

/// Runs until a stop is asked for.
pub(super) fn run(sh: &Shared) {
    let mut eg = Egress::new(sh);
    let mut ing = Ingress::new(sh);
    let mut traffic = false;
    loop {
        let sleep = eg.sleep(Instant::now());
        let Some([tun, sock]) = sh.wait_any([sh.tun.as_fd(), sh.socket.as_fd()], sleep, traffic)
        else {
            return;
        };
        traffic = false;
        if sock {
            traffic |= ing.turn(sh);
        }
        // The egress turn also runs the flow timers and keepalives: when
        // they are due, even without TUN input.
        if tun || eg.sleep(Instant::now()) == Duration::ZERO {
            traffic |= eg.turn(sh);
        }
    }
}
