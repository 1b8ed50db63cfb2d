"""Identity: users, passwords, access and refresh tokens, login sessions."""
