//! Edges: where mail enters (filled in by the edge work).
