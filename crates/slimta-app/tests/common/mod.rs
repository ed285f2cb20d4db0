//! Pieces shared by the binary's black-box tests.

#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod config;
