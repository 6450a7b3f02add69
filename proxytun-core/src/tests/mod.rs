//! Rule-by-rule tests of the packet core. Packets are built and checked
//! with `etherparse`, an independent implementation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod clients;
mod drops;
mod flows;
mod fragments;
mod fuzz;
mod icmp;
mod isolation;
mod keepalive;
mod node_keys;
mod offload;
mod pair;
mod policy;
mod prop;
mod reject;
mod rewrite;
