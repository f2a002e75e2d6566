"""Plans, periods, seats, the seat-month balance and redemption codes (DESIGN 2.1, 2.2, 2.8).

Pure rules in `presets`, `seats`, `balance`, `redemption`, `expiry` and `charges`; PostgreSQL in
`store`. See README.md.
"""
