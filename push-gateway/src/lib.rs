//! The TI-Messenger push gateway: Matrix Push Gateway API in, content-free Web Push out.
//! So far the Web Push building blocks: message encryption and VAPID (`webpush`) and one
//! delivery with its outcome (`delivery`); the Push Gateway API service follows.

pub mod delivery;
pub mod webpush;
