//! The resolver over real sockets, on 127.0.0.1 only: queries over UDP and
//! TCP, snapshot changes, truncation, malformed packets, forwarding to a
//! fake upstream, the forward bound and etcd-mode name misses.
//!
//! One test binary; the fixture and the query helpers are in
//! `server/fixture.rs`, the scenarios beside it: answers, malformed
//! packets, forwarding, start and stop.

#[path = "server/answers.rs"]
mod answers;
#[path = "server/fixture.rs"]
mod fixture;
#[path = "server/forwarding.rs"]
mod forwarding;
#[path = "server/lifecycle.rs"]
mod lifecycle;
#[path = "server/malformed.rs"]
mod malformed;
