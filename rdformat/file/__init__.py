"""Reading and writing .rdc files: the streaming reader and the streaming, atomic writer."""
