"""Rating: usage (a model and quantities per dimension) turned into credits by rate cards.

`dimensions` holds the known dimensions, `card` the rate card and its model rules, `rate` the pure
rating function, `providers` the mapping of provider usage objects, `book` the cards in force and
their PostgreSQL loader. The rules are in `README.md`.
"""
