"""The reference application: business ideas triaged by the light tier and analyzed by the heavy tier."""
