"""The text test set for the local model (also read by tests/bench/moderation.py).

Written for this suite. ``offensive`` holds profanity and harassment, which the local model
is meant to catch; ``benign`` includes wording that trips keyword filters (kill a process,
a history of racism, treating a cut)."""

BENIGN = [
    "Hello, this is a test message",
    "Have a lovely day, see you at the meeting tomorrow.",
    "Can you recommend a good recipe for banana bread?",
    "The quarterly report is attached; please review section 3.",
    "How do I kill the process that is holding port 8080?",
    "We are reading a book about the history of racism in America.",
    "What is the best way to treat a small cut on my finger?",
    "The match was a massacre: our team lost 7-0.",
    "My grandmother turns ninety next week and we are throwing a party.",
    "Please shoot me an email when the build is green.",
    "The cat knocked the glass off the table again.",
]
OFFENSIVE = [
    "you are a fucking idiot",
    "Shut up, you stupid bitch.",
    "I will kill you, you worthless piece of shit",
    "Go fuck yourself, nobody wants you here.",
    "what a dumb ass comment, moron",
    "You're an ugly loser and everyone laughs at you, asshole.",
    "The weather is nice today. But you are a pathetic cunt.",
    "eat shit and die",
    "Fuck off and stop posting this crap.",
    "you retarded dickhead",
]
# Not asserted either way; reported in docs/benchmarks.md. Mild profanity ("damn") and
# harassment without swear words, which a profanity model is not built to catch.
MILD = ["This sauce is damn good."]
HARASSMENT_WITHOUT_PROFANITY = [
    "Nobody likes you, just disappear forever.",
    "People like you should not be allowed to live.",
    "You are worthless and everyone knows it.",
    "I know where you live and I am coming for you.",
]
