//! Empty on purpose: the programs are in the `tracer-ebpf` binary. This library target exists
//! so that tracer-user can list the crate as a build dependency, and cargo rebuilds the embedded
//! object when it changes.
#![no_std]
