//! The proxytun dataplane and the node daemon that runs the whole stack.
