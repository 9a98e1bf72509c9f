"""One screen per area of the loop; each is a mode of ReckonApp."""
