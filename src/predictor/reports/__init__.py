"""What managers read: the follow-up plan (mined and recommended) and the HTML report."""
