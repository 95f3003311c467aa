//! projstore end-to-end support (not built yet: see README status).
