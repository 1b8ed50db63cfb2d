"""Admin: what only an operator may do over HTTP (admin routes), and the command that makes one."""
