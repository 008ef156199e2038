"""The Textual chat app: screens, widgets, themes and chat history."""
