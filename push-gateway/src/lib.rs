//! The TI-Messenger push gateway: Matrix Push Gateway API in, content-free Web Push out.
//! So far the Web Push building blocks (message encryption and VAPID); the HTTP service and
//! delivery follow.

pub mod webpush;
