"""Tools: the calls models make, in the formats their templates teach."""
