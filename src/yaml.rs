//! YAML with line numbers: maps dotted field paths of a document to the line they start on.
