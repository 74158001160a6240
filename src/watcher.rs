//! Inbox discovery: notify events wake a scan, the periodic full scan is the truth, and a file
//! becomes a candidate only once it has been stable for `watch.settle`.
