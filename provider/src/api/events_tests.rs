//! Event select, overlapped I/O and their interaction with close, over the loopback datapath.
