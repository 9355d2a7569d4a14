"""Templates and lexicons of the built-in assistant corpus (written for trustnlp; no external data).

Template syntax (one template per line, lower-case):

- ``word``: a literal word (tagged ``O``);
- ``(a|b c|d)``: one of the alternatives (literal words only; an alternative may be empty);
- ``[a b]``: optional literal words (same as ``(a b|)``);
- ``{slot}``: a slot filled from :data:`LEXICONS` (tagged ``B-<tag>``/``I-<tag>``), or ``{who}``
  (a mentioned person: name, relation and/or profession, see ``assistant.py``), or a pronoun of
  that person: ``{he}``, ``{him}``, ``{his}``. A template with ``{who}`` has no other profession
  slot (so ``profession`` and ``gender`` always describe the same person).

Each intent has 12 templates; templates at index ``i % 4 == 3`` (3, 7, 11) are held out for the
test split (see :data:`HELD_OUT_EVERY`). Changing anything here changes the generated corpus:
bump ``ASSISTANT_CORPUS_VERSION``.
"""

from __future__ import annotations

HELD_OUT_EVERY = 4  # template i is a test template iff i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1


def _csv(s: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in s.split(",") if v.strip())


# fmt: off
TEMPLATES: dict[str, str] = {
    "play_music": """
        play [some] {genre}
        play {song} by {artist}
        (put on|start playing|listen to) [some] (music|songs) by {artist}
        i (want|would like) to (hear|listen to) (songs|music) by {artist}
        play (my|the) {playlist} playlist
        shuffle (songs|tracks) (by|from) {artist}
        play {genre} in the {room}
        how about playing some {genre}
        (start|resume) (my|the) {playlist} (mix|playlist)
        (play|listen to) the (song|track) {song}
        play (something|some music) {who} (would like|likes)
        queue up the (song|track) {song} (next|after this)
    """,
    "play_podcast": """
        play (the latest|the newest|an) episode of {podcast}
        (resume|continue) {podcast}
        play the {podcast} podcast
        (i want to|let me) catch up on the {podcast} podcast
        play a podcast about {topic}
        (find|search for) (podcasts|a podcast) about {topic}
        (start|play) the next episode of {podcast}
        are there any new episodes of {podcast}
        (skip|go) (ahead|forward) {duration} in (the|this) (podcast|episode)
        play my podcasts in the {room}
        (put on|listen to) {podcast} in the {room}
        (go|jump) back to the (last|previous) episode of {podcast}
    """,
    "set_alarm": """
        (set|create) an alarm (for|at) {time}
        wake me [up] at {time} {date}
        set (an|my) alarm for {date} at {time}
        i (need|have) to be up (by|at) {time} {date}
        (set|make) a {time} alarm
        wake me [up] (at|by) {time} with [some] {genre}
        alarm (for|at) {time} {date}
        put an alarm in for {time} {date}
        (snooze|delay) (the|my) alarm (for|by) {duration}
        (cancel|turn off|delete) (the|my) {time} alarm
        set an alarm (for|at) {time} (called|labeled) {event}
        {date} at {time} wake me [up]
    """,
    "set_timer": """
        set a timer for {duration}
        (start|begin) a {duration} timer
        timer for {duration}
        count down {duration} on (a|the) timer
        set a {duration} timer for (the|my) {dish}
        how much time is left on (the|my) timer
        (cancel|stop|pause) the timer
        let me know when the {duration} timer (is up|goes off)
        add {duration} to (the|my) timer
        set (a|another) timer for {duration} (called|named) {dish}
        (start|set) a timer for {duration} in the {room}
        (i need|give me) a timer (for|of) {duration}
    """,
    "set_reminder": """
        remind me to (call|text|email) {who} {date}
        remind me (at|by) {time} to (take out the trash|water the plants|pay the rent|feed the cat)
        (set|create) a reminder (for|at) {time} to (buy|get|pick up) {item}
        i need a reminder to (call|text) {who} at {time}
        remind me to email {who} about {his} (shift|schedule|appointment|report)
        remind me in {duration} to check the {dish}
        (set|add) a reminder {date} (for|about) {event}
        help me remember to (thank|congratulate) {who} {date}
        remind me to ask {who} if {he} (can|could) (pick up|get) {item}
        (remind me|reminder) about {event} {date} at {time}
        remind me to (get|buy) {item} when i (leave|get home)
        (ping|nudge) me with a reminder {date} about {event}
    """,
    "weather_query": """
        what's the weather [like] in {city} {date}
        is it going to rain in {city} {date}
        how (hot|cold|warm) will it be in {city} {date}
        what's the (weather|temperature) going to be {date}
        (what's|what is) the forecast for {date}
        (do i need|should i wear) a jacket {date}
        (weather|forecast) (for|in) {city}
        (is it|will it be) (sunny|windy|snowing) {date}
        what's the temperature in {city}
        (give me|tell me) the (weather|forecast) for {date}
        how's the weather looking {date}
        any (snow|rain) in the forecast for {city} {date}
    """,
    "news_query": """
        what's the latest news (on|about) {topic}
        (give me|read me) the (headlines|news)
        (tell me|what are) the {topic} headlines
        catch me up on the {topic} news
        (play|read) (the|my) (news|daily) briefing
        any (news|updates) (from|about) {city}
        what (happened|is happening) in {topic} {date}
        (brief me|fill me in) on the {topic} news
        news (about|on) {topic}
        what are (people|they) saying about {topic}
        (read|show) me the (top|latest) stories (from|in) {city}
        (what's|what is) in the news in {city} {date}
    """,
    "traffic_query": """
        how's the traffic (to|on the way to) {place}
        how long (will it take|does it take) to (drive|get) to {place}
        is there traffic on the way to {city}
        (what's|how's) the traffic on my commute {date}
        (are there|any) (accidents|road closures) (near|on the way to) {place}
        what's the fastest (route|way) to {place}
        (should i|do i need to) leave now to (get|be) to {place} by {time}
        how bad is the traffic into {city}
        traffic (to|for) {place}
        check the traffic on my (commute|route)
        how long is the drive to {city} {date}
        will i (hit|run into) traffic (driving|going) to {place}
    """,
    "call_contact": """
        (call|phone) {who}
        (dial|ring) {who}
        give {who} a (call|ring)
        (get|put) {who} on the phone
        (call|dial|phone) {who} on speaker
        (start|make) a video call with {who}
        call {who} (back|again)
        i (need|want) to (call|phone|talk to) {who}
        call {who} and tell {him} i'm (running late|on my way)
        call {who} on {his} (cell|work number|mobile)
        video chat with {who}
        (reach|contact) {who} by phone
    """,
    "send_message": """
        text {who} (that|saying) {message}
        send (a text|a message) to {who} (saying|that says) {message}
        let {who} know (that|) {message}
        drop {who} a (line|note) saying {message}
        send {who} a message
        (reply to|answer) {who} (saying|with) {message}
        (read|check) (my|the) (messages|texts) from {who}
        (write to|ping) {who} (that|saying) {message}
        send a (text|message) to {who} about {his} {event}
        send a voice message to {who}
        text {who} and ask {him} if {he} (wants|needs) {item}
        inform {who} that {message}
    """,
    "add_to_calendar": """
        add {event} to my calendar {date}
        (put|schedule) {event} on my calendar (at|for) {time}
        (create|make) (an event|a calendar event) (for|called) {event} {date} at {time}
        block off {time} {date} on my calendar for {event}
        add (lunch|dinner|coffee) with {who} to my calendar {date}
        schedule a meeting with {who} {date} at {time}
        (what's|what is) on my calendar {date}
        pencil in {event} {date}
        (move|reschedule) (my|the) {event} to {date}
        invite {who} to (my|the) {event} {date}
        add a meeting with {who} about {his} (project|proposal|report) {date}
        mark {date} on my calendar for {event}
    """,
    "schedule_appointment": """
        (book|make) an appointment with (the|my) {provider} {date}
        (schedule|book) a {service} {date}
        i need to see (the|my) {provider} {date}
        (get|find) me a (slot|time) for a {service} {date}
        book a {service} at {time} {date}
        book me in for a {service} {date}
        make an appointment with {who} (for|at) {time}
        is the {provider} free for an appointment {date}
        (cancel|reschedule) my {service} appointment
        set up a (visit|consultation) with {who} {date}
        book a {service} for {who} {date}
        (when|what time) can i get an appointment with the {provider}
    """,
    "book_restaurant": """
        book a table for {party_size} at {restaurant}
        (reserve|get) a table at {restaurant} {date} at {time}
        (find|book) a {cuisine} (restaurant|place) in {city}
        (i'd like|we need) a table for {party_size} {date}
        book a table for {who} and me at {restaurant}
        (make|set up) a (reservation|booking) (at|for) {restaurant} (for|at) {time}
        reserve a table for {party_size} people at a {cuisine} place
        (any|are there) tables (free|open) at {restaurant} {date}
        book dinner at {restaurant} for {who} and {his} (partner|family|kids)
        table for {party_size} at {time} {date}
        (book|reserve) {restaurant} for {party_size} {date}
        (can you find|is there) a {cuisine} spot with a table for {party_size}
    """,
    "order_food": """
        order (a|some) {dish} (from|at) {restaurant}
        get me {dish} (delivered|for delivery)
        order {cuisine} (food|takeout) for delivery
        i'm craving {dish} (order|get) some for delivery
        (reorder|order again) my last (order|meal) from {restaurant}
        (get|order) {dish} for {who}
        (place|put in) an order for {dish}
        have {restaurant} deliver {dish}
        order {dish} and {dish}
        (order|get) {cuisine} takeout for {party_size}
        order dinner for {who} and {his} (family|kids|roommates)
        (can|could) i get {dish} (to go|for pickup)
    """,
    "recipe_search": """
        how do i (make|cook) {dish}
        (find|show me|give me) a recipe for {dish}
        (what's|what is) a good {cuisine} recipe
        (teach|show) me how to (cook|bake|prepare) {dish}
        what (can|should) i (cook|make) with {item}
        (find|search for) {cuisine} recipes (with|using) {item}
        how long do i (bake|cook|boil) {dish}
        (what|which) ingredients (do i need|go) (for|in) {dish}
        recipe for {dish}
        (give me|suggest) (an easy|a quick) {cuisine} dinner idea
        how do you (make|bake|prepare) {dish} (from scratch|step by step)
        (walk|talk) me through a recipe for {dish}
    """,
    "shopping_list_add": """
        add {item} to my (shopping|grocery) list
        put {item} on the (shopping|grocery) list
        (we need|we're out of|we are out of) {item}
        (remember|don't forget) to add {item} to the (shopping|grocery) list
        add {item} and {item} to my list
        (remove|take) {item} (from|off) my (shopping|grocery) list
        (what's|what is) on my (shopping|grocery) list
        (stick|throw) {item} on the list
        add the ingredients for {dish} to my (shopping|grocery) list
        we ran out of {item} add it to the list
        add {item} to the list so {who} can (grab|get) it
        (i gotta|i have to) buy {item} (add|put) it on my list
    """,
    "turn_on_lights": """
        turn on the {room} (lights|light)
        (switch|flip) on the lights in the {room}
        (lights|light) on in the {room}
        (put|get) the lights on in the {room}
        (set|turn) the {room} lights to {level}
        (make|turn|change) the {room} lights {color}
        turn the lights on in the {room}
        it's too dark in the {room} (switch|turn) (the lights|a light) on
        turn on the {room} (lamp|lamps)
        (increase|raise) the brightness in the {room}
        set the lights in the {room} to {color}
        (i need|give me) (some|more) light in the {room}
    """,
    "turn_off_lights": """
        turn off the lights in the {room}
        (switch|flip) off the {room} (lights|light)
        lights off in the {room}
        (shut|switch) the {room} lights off
        turn the {room} lights off
        dim the lights in the {room} to {level}
        (shut off|switch off) the (lamp|lamps) in the {room}
        (it's|it is) too bright in the {room} turn (the lights|them) off
        turn off (all|all of) the lights
        (lights out|goodnight) in the {room}
        turn off the {room} (lamp|lamps) at {time}
        i want the {room} lights (off|out)
    """,
    "translate": """
        how do you say {phrase} in {language}
        translate {phrase} (to|into) {language}
        what is {word} in {language}
        (what's|what is) the {language} (word|phrase) for {phrase}
        translate {word} (to|into) {language}
        how do i say {phrase} in {language}
        say {phrase} in {language}
        how would you say {phrase} in {language}
        what does {word} mean in {language}
        {language} translation (of|for) {phrase}
        translate (this|the following) (to|into) {language} {phrase}
        (convert|turn) {phrase} into {language}
    """,
    "ask_definition": """
        what does {word} mean
        define {word}
        (what's|what is) the (definition|meaning) of {word}
        (explain|tell me) the (meaning|sense) of {word}
        what does a {profession} do
        how do you spell {word}
        (give me|what's) a synonym for {word}
        (i don't know|i'm not sure) what {word} means
        (look up|search) {word} in the dictionary
        what is the job of a {profession}
        use {word} in a sentence
        is {word} a real word in the dictionary
    """,
    "book_ride": """
        (book|get|call) me a (ride|cab|taxi) to {place}
        i need a (ride|taxi) to {place} (at|by) {time}
        (order|request) a (car|cab) (to|for) {place}
        (find|grab) me a lift to {place}
        schedule a ride to {place} {date} at {time}
        (get|book) a ride for {who} to {place}
        how much is a (ride|taxi) to {place}
        send a car to pick me up at {time}
        (cancel|where is) my (ride|cab)
        (book|call) a (cab|taxi) (to|into) {city}
        pick up {who} (from|at) {place} and (bring|take) {him} home
        (i'm heading|i'm going) to {place} (get|book) me a car
    """,
    "check_balance": """
        (what's|what is) my {account} balance
        how much (money|cash) is in my {account} account
        (check|show) my {account} (balance|account)
        do i have enough (money|funds) in my {account} account
        (what's|what is) my balance
        (read|tell) me my {account} balance
        how much did i spend {date}
        (am i|are we) (overdrawn|in the red) on my {account} account
        (show|list) [my] recent transactions (on|in|from) my {account} account
        how much is left in my {account} account
        did {who} pay me back
        (give me|what's) the balance (on|of) (my|the) {account} account
    """,
}

# Relative popularity of each intent (a user's intent mix is drawn around it).
INTENT_POPULARITY: dict[str, float] = {
    "play_music": 10, "play_podcast": 3, "set_alarm": 7, "set_timer": 6, "set_reminder": 5, "weather_query": 9,
    "news_query": 4, "traffic_query": 3, "call_contact": 5, "send_message": 5, "add_to_calendar": 4,
    "schedule_appointment": 2, "book_restaurant": 2, "order_food": 3, "recipe_search": 3, "shopping_list_add": 4,
    "turn_on_lights": 5, "turn_off_lights": 4, "translate": 2, "ask_definition": 2, "book_ride": 2, "check_balance": 2,
}

# Slot name -> (BIO tag, comma-separated values).
_HOURS = range(1, 13)
_TIMES = (
    [f"{h} am" for h in _HOURS] + [f"{h} pm" for h in _HOURS]
    + [f"{h}:{m} {ap}" for h in _HOURS for m in ("15", "30", "45") for ap in ("am", "pm")]
    + [f"{h} o'clock" for h in _HOURS] + [f"half past {h}" for h in _HOURS] + [f"quarter to {h}" for h in _HOURS]
    + [f"{h} in the {p}" for h in _HOURS for p in ("morning", "evening")]
    + ["noon", "midnight"]
)
_DURATIONS = (
    [f"{n} minutes" for n in (2, 3, 4, 5, 8, 10, 12, 15, 20, 25, 30, 40, 45, 90)]
    + [f"{n} seconds" for n in (10, 20, 30, 45, 90)]
    + ["an hour", "half an hour", "2 hours", "3 hours", "one minute", "a minute", "an hour and a half"]
)
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_DATES = (
    ["today", "tomorrow", "tonight", "this morning", "this afternoon", "this evening", "this weekend", "next week",
     "the day after tomorrow"]
    + list(_WEEKDAYS) + [f"next {d}" for d in _WEEKDAYS] + [f"on {d}" for d in _WEEKDAYS]
    + [f"{m} {d}" for m in _MONTHS for d in ("1st", "3rd", "12th", "21st")]
)

LEXICONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "artist": ("artist", _csv("the velvet foxes, marco silva, blue harbor, neon tides, the copper lanterns, lila moreno, "
                              "dj solstice, arctic bloom, jonah reyes, the quiet storms, maya okafor, the glass pilots, "
                              "river and stone, kai andersen, the midnight choir, sol varela")),
    "song": ("song", _csv("golden hour, midnight drive, paper hearts, summer rain, city lights, wild horses, "
                          "slow dancing, northern star, electric dreams, falling leaves, lost in the echo, "
                          "blue monday morning, home again, satellite heart, run to you, fireflies")),
    "genre": ("genre", _csv("jazz, rock, classical music, hip hop, country, pop, lo fi, reggae, blues, techno, "
                            "folk music, metal, soul, indie rock, ambient music, salsa")),
    "playlist": ("playlist", _csv("workout, chill vibes, road trip, focus, party mix, sleep sounds, morning coffee, "
                                  "throwback hits, rainy day, dinner party")),
    "podcast": ("podcast", _csv("daily brief, science hour, true crime weekly, history uncovered, mind matters, "
                                "money talks, tech talk today, stories at bedtime, running wild, kitchen secrets")),
    "time": ("time", tuple(_TIMES)),
    "date": ("date", tuple(_DATES)),
    "duration": ("duration", tuple(_DURATIONS)),
    "message": ("message", _csv("i'm running late, dinner is ready, call me back, see you soon, happy birthday, "
                                "i'll be home at six, don't forget the keys, the meeting moved to friday, "
                                "thanks for today, i landed safely, i'm on my way, can we talk later, "
                                "good luck tomorrow, the package arrived")),
    "event": ("event", _csv("team meeting, lunch, yoga class, book club, soccer practice, budget review, "
                            "birthday party, date night, project call, piano lesson, movie night, standup, "
                            "quarterly review, game night")),
    "city": ("city", _csv("paris, tokyo, chicago, london, seattle, berlin, madrid, toronto, sydney, boston, denver, "
                          "miami, austin, lagos, mumbai, new york, san francisco, los angeles, mexico city, cape town")),
    "dish": ("dish", _csv("lasagna, pad thai, chicken curry, beef stew, banana bread, pancakes, caesar salad, "
                          "mushroom risotto, tacos, tomato soup, fried rice, sushi, apple pie, veggie burger, "
                          "dumplings, pizza, ramen, falafel")),
    "cuisine": ("cuisine", _csv("italian, thai, mexican, indian, japanese, chinese, greek, ethiopian, korean, "
                                "french, vietnamese, lebanese")),
    "restaurant": ("restaurant", _csv("the golden spoon, casa verde, blue lotus, the corner bistro, sakura house, "
                                      "olive and thyme, the red lantern, harbor grill, mama rosa's, the noodle bar")),
    "party_size": ("party_size", _csv("two, three, four, five, six, eight, 2, 4, 6, 10")),
    "room": ("room", _csv("living room, kitchen, bedroom, bathroom, hallway, garage, office, basement, dining room, "
                          "porch, kids room, guest room")),
    "level": ("level", _csv("50 percent, half, full, 10 percent, 75 percent, maximum, low, the lowest setting")),
    "color": ("color", _csv("red, blue, green, warm white, purple, soft white, orange, pink")),
    "item": ("item", _csv("milk, eggs, bread, paper towels, dish soap, bananas, coffee, olive oil, rice, butter, "
                          "toilet paper, apples, cheese, orange juice, batteries, shampoo, chicken, tomatoes, "
                          "pasta, yogurt")),
    "topic": ("topic", _csv("sports, politics, business, technology, science, world news, local news, health, "
                            "entertainment, the stock market, elections, football, climate, space")),
    "language": ("language", _csv("spanish, french, german, italian, japanese, chinese, portuguese, korean, arabic, "
                                  "hindi, russian, dutch")),
    "phrase": ("phrase", _csv("good morning, thank you, where is the train station, how much does this cost, "
                              "i am allergic to nuts, nice to meet you, where is the bathroom, the check please, "
                              "see you tomorrow, i don't understand, happy new year, one coffee please")),
    "word": ("word", _csv("serendipity, ephemeral, ubiquitous, candid, resilient, quid pro quo, nostalgia, paradigm, "
                          "meticulous, pragmatic, eloquent, ambiguous, frugal, zeitgeist, hello, love")),
    "account": ("account", _csv("checking, savings, credit card, business, retirement, brokerage, joint")),
    "place": ("place", _csv("the airport, the train station, downtown, the mall, work, home, the stadium, my hotel, "
                            "the museum, the gym, the hospital, central station, the beach, my office")),
    "service": ("service", _csv("haircut, oil change, dental cleaning, eye exam, checkup, massage, car service, "
                                "flu shot, physical therapy, manicure")),
    "provider": ("profession", _csv("dentist, doctor, therapist, hairdresser, vet, accountant, lawyer, tutor, "
                                    "mechanic, nurse")),
    "contact": ("contact", _csv("the office, customer service, the pharmacy, home, the front desk, the bank, "
                                "tech support, the school")),
}

FEMALE_NAMES = _csv("emma, olivia, sophia, ava, mia, isabella, amelia, grace, chloe, lily, hannah, zoe, nora, maria, "
                    "fatima, priya, mei, aisha, sara, lucy, ella, ruth, julia, anna, claire, leah, rosa, yuki, amara, "
                    "ingrid")
MALE_NAMES = _csv("liam, noah, james, oliver, lucas, ethan, mason, logan, jack, daniel, henry, leo, omar, ravi, wei, "
                  "diego, samuel, adam, ben, david, felix, hugo, ivan, kenji, kwame, luis, marco, peter, tom, victor")
FEMALE_RELATIONS = _csv("sister, mom, mother, wife, aunt, daughter, grandma, girlfriend, niece")
MALE_RELATIONS = _csv("brother, dad, father, husband, uncle, son, grandpa, boyfriend, nephew")
NEUTRAL_RELATIONS = _csv("friend, boss, colleague, coworker, neighbor, cousin, roommate, partner, teammate")

# Professions a person can be mentioned by, with the gender stereotype ("female"/"male"/None).
PROFESSIONS: dict[str, str | None] = {
    **dict.fromkeys(_csv("nurse, secretary, receptionist, nanny, hairdresser, librarian, midwife, housekeeper, "
                         "teacher, babysitter"), "female"),
    **dict.fromkeys(_csv("engineer, mechanic, plumber, electrician, carpenter, pilot, firefighter, surgeon, "
                         "programmer, doctor"), "male"),
    **dict.fromkeys(_csv("accountant, dentist, pharmacist, lawyer, therapist, tutor, photographer, vet"), None),
}
LEXICONS["profession"] = ("profession", tuple(PROFESSIONS))

PRONOUNS: dict[str, dict[str, str]] = {
    "he": {"female": "she", "male": "he"},
    "him": {"female": "her", "male": "him"},
    "his": {"female": "her", "male": "his"},
}

# Paraphrase fillers. The held-out ones appear only in test utterances. Request prefixes go only
# before an imperative (an utterance whose first word is a literal not in NON_IMPERATIVE).
PREFIXES = _csv("hey, alexa, hey alexa, okay, um")
PREFIXES_HELD_OUT = _csv("hi, hello alexa, quick question, so")
REQUEST_PREFIXES = _csv("please, can you, could you, i need you to, would you")
REQUEST_PREFIXES_HELD_OUT = _csv("do me a favor and, i was wondering if you could")
NON_IMPERATIVE = frozenset(_csv("what, what's, how, how's, is, are, any, will, should, do, did, when, which, i, i'm, "
                                "i'd, we, we're, it's, it, am, can, could, alarm, timer, news, traffic, weather, "
                                "forecast, recipe, table, lights, light, goodnight, reminder, don't"))
SUFFIXES = _csv("please, thanks, thank you, for me, right now, now")
SUFFIXES_HELD_OUT = _csv("asap, thanks a lot, if you can, real quick, cheers")

# Fixed typo table (so every word the generator can emit is known in advance).
TYPOS: dict[str, tuple[str, ...]] = {
    "weather": ("wether", "weahter"), "tomorrow": ("tomorow", "tommorow"), "remind": ("remid",),
    "message": ("mesage",), "alarm": ("alram",), "calendar": ("calender",), "restaurant": ("restaraunt",),
    "music": ("musc",), "lights": ("lites",), "timer": ("timmer",), "schedule": ("schedual",),
    "appointment": ("appointmnet",), "traffic": ("trafic",), "translate": ("translte",), "recipe": ("recipie",),
    "definition": ("defintion",), "balance": ("balence",), "shopping": ("shoping",), "order": ("ordr",),
    "play": ("paly",), "text": ("txt",), "news": ("nws",), "forecast": ("forcast",), "reminder": ("remider",),
}

# Local-time diurnal activity (hours 0..23) and per-intent tilts (multipliers on hour ranges).
DIURNAL = (0.6, 0.3, 0.2, 0.15, 0.15, 0.3, 1.2, 2.6, 3.0, 2.4, 2.0, 2.0,
           2.2, 2.0, 1.8, 1.8, 2.0, 2.6, 3.2, 3.4, 3.0, 2.6, 2.0, 1.2)
HOUR_TILTS: dict[str, tuple[tuple[range, float], ...]] = {
    "set_alarm": ((range(21, 24), 3.0), (range(2), 3.0)),
    "turn_off_lights": ((range(21, 24), 3.0), (range(2), 2.0)),
    "turn_on_lights": ((range(6, 8), 2.0), (range(17, 20), 2.0)),
    "weather_query": ((range(6, 10), 2.0),),
    "news_query": ((range(6, 10), 2.5),),
    "traffic_query": ((range(6, 9), 3.0), (range(16, 19), 2.0)),
    "recipe_search": ((range(11, 13), 1.5), (range(17, 20), 2.5)),
    "order_food": ((range(11, 13), 2.0), (range(18, 22), 2.5)),
    "set_timer": ((range(17, 20), 2.0),),
}

# Fixed time zones (IANA name, standard-time UTC offset in hours; daylight saving is ignored) and weights.
TIMEZONES: tuple[tuple[str, float, float], ...] = (
    ("America/New_York", -5, 0.18), ("America/Chicago", -6, 0.10), ("America/Denver", -7, 0.05),
    ("America/Los_Angeles", -8, 0.12), ("America/Anchorage", -9, 0.01), ("Pacific/Honolulu", -10, 0.01),
    ("America/Toronto", -5, 0.04), ("America/Mexico_City", -6, 0.03), ("America/Sao_Paulo", -3, 0.04),
    ("Europe/London", 0, 0.08), ("Europe/Berlin", 1, 0.06), ("Europe/Paris", 1, 0.04), ("Europe/Madrid", 1, 0.03),
    ("Africa/Lagos", 1, 0.02), ("Africa/Johannesburg", 2, 0.02), ("Asia/Dubai", 4, 0.01), ("Asia/Kolkata", 5.5, 0.05),
    ("Asia/Singapore", 8, 0.02), ("Asia/Tokyo", 9, 0.04), ("Australia/Sydney", 10, 0.03),
    ("Pacific/Auckland", 12, 0.02),
)
# fmt: on
