//! projstore controller (not built yet: see README status).
